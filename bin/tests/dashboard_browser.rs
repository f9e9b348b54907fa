//! The dashboard in a real browser: headless Chromium loads `/dashboard` from the admin port of
//! one member of a running cluster of real processes (a 3-member controller and two 3-member
//! groups over mutual TLS), and the test reads the DOM the page's script rendered: the
//! configuration number, every shard's group, every group's leader and members. Then a shard
//! moves (`shardctrler-client move`) and a member is killed, and the page must show both. The
//! last step writes a screenshot.
//!
//! Chromium is found on PATH (`chromium`, `chromium-browser`, `google-chrome`) or named by
//! `QKV_CHROMIUM`. Without one the test is skipped with a message, except under `CI=true`,
//! where it fails: `scripts/test.sh` installs Debian's `chromium` package when it is missing.

mod support;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use support::{ok, three_member_groups, wait_for, ProcCluster, CTRL_CLIENT, KV_CLIENT};

const SHARDS: usize = 16;
const WAIT: Duration = Duration::from_secs(20);
/// Bound of one browser run (start, load, render, exit).
const BROWSER_LIMIT: Duration = Duration::from_secs(60);

fn find_chromium() -> Option<PathBuf> {
    if let Some(p) = std::env::var_os("QKV_CHROMIUM") {
        return Some(PathBuf::from(p));
    }
    let path = std::env::var_os("PATH")?;
    [
        "chromium",
        "chromium-browser",
        "google-chrome",
        "google-chrome-stable",
    ]
    .iter()
    .flat_map(|name| std::env::split_paths(&path).map(move |dir| dir.join(name)))
    .find(|p| p.is_file())
}

/// Runs headless Chromium on `url` with `what` (`--dump-dom` or `--screenshot=FILE`), letting
/// the page run for three seconds of virtual time (three polls); returns its stdout.
fn browse(browser: &Path, profile: &Path, url: &str, what: &str) -> String {
    let out = profile.with_extension("out");
    let err = profile.with_extension("err");
    let mut child = Command::new(browser)
        .args([
            "--headless",
            // The sandbox needs user namespaces, which a container running as root lacks.
            "--no-sandbox",
            "--disable-gpu",
            "--disable-dev-shm-usage",
            "--no-first-run",
            "--hide-scrollbars",
            "--window-size=1400,1250",
            "--virtual-time-budget=3000",
        ])
        .arg(format!("--user-data-dir={}", profile.display()))
        .arg(what)
        .arg(url)
        .stdin(Stdio::null())
        .stdout(std::fs::File::create(&out).unwrap())
        .stderr(std::fs::File::create(&err).unwrap())
        .spawn()
        .expect("start chromium");
    let deadline = Instant::now() + BROWSER_LIMIT;
    let status = loop {
        if let Some(status) = child.try_wait().unwrap() {
            break status;
        }
        if Instant::now() >= deadline {
            let _ = child.kill();
            let _ = child.wait();
            panic!(
                "chromium did not finish within {BROWSER_LIMIT:?}: {}",
                std::fs::read_to_string(&err).unwrap_or_default()
            );
        }
        std::thread::sleep(Duration::from_millis(50));
    };
    assert!(
        status.success(),
        "chromium failed ({status}): {}",
        std::fs::read_to_string(&err).unwrap_or_default()
    );
    std::fs::read_to_string(&out).unwrap()
}

/// The start tags of `dom` whose class list contains `class`, as attribute maps (Chromium
/// serializes attributes as `name="value"`, with `&`, `"`, `<` and `>` escaped).
fn elements(dom: &str, class: &str) -> Vec<BTreeMap<String, String>> {
    let mut found = Vec::new();
    for tag in dom.split('<').skip(1) {
        let Some(end) = tag.find('>') else { continue };
        let mut attrs = BTreeMap::new();
        let mut rest = &tag[..end];
        while let Some(eq) = rest.find("=\"") {
            let name = rest[..eq]
                .rsplit(' ')
                .next()
                .unwrap_or_default()
                .to_string();
            let Some(close) = rest[eq + 2..].find('"') else {
                break;
            };
            let value = rest[eq + 2..eq + 2 + close]
                .replace("&quot;", "\"")
                .replace("&lt;", "<")
                .replace("&gt;", ">")
                .replace("&amp;", "&");
            attrs.insert(name, value);
            rest = &rest[eq + 2 + close + 1..];
        }
        if attrs
            .get("class")
            .is_some_and(|c| c.split(' ').any(|c| c == class))
        {
            found.push(attrs);
        }
    }
    found
}

/// The text inside the element with `id` (no nested elements).
fn text_of(dom: &str, id: &str) -> String {
    let start = dom
        .find(&format!("id=\"{id}\""))
        .unwrap_or_else(|| panic!("no #{id} in the page"));
    let open = dom[start..].find('>').unwrap() + start + 1;
    let close = dom[open..].find('<').unwrap() + open;
    dom[open..close].to_string()
}

fn json(out: &std::process::Output) -> serde_json::Value {
    serde_json::from_str(&ok(out)).unwrap()
}

/// The gid owning each shard, and the configuration number, from the controller.
fn config(c: &ProcCluster) -> (u64, Vec<u64>) {
    let q = json(&c.run(CTRL_CLIENT, &["--json", "query"]));
    let shards = q["shards"]
        .as_array()
        .unwrap()
        .iter()
        .map(|g| g.as_u64().unwrap())
        .collect();
    (q["num"].as_u64().unwrap(), shards)
}

/// Every group's leader per `shardkv-client status`, once every shard is served and every
/// group has a leader.
fn settled(c: &ProcCluster) -> BTreeMap<u64, u64> {
    wait_for("every shard served, every group led", WAIT, || {
        let s = json(&c.run(KV_CLIENT, &["--timeout", "5", "--json", "status"]));
        let groups = s["groups"].as_array()?;
        let serving: usize = groups
            .iter()
            .flat_map(|g| g["shards"].as_array().into_iter().flatten())
            .filter(|s| s["state"] == "serving")
            .count();
        let leaders: BTreeMap<u64, u64> = groups
            .iter()
            .filter_map(|g| Some((g["gid"].as_u64()?, g["leader_id"].as_u64()?)))
            .collect();
        (serving == SHARDS && leaders.len() == groups.len()).then_some(leaders)
    })
}

/// Renders the page until `pred` holds for its DOM (the cluster may still be settling, and a
/// page shows what its server gathered a moment ago); returns that DOM.
fn dom_until(
    browser: &Path,
    profile: &Path,
    url: &str,
    what: &str,
    mut pred: impl FnMut(&str) -> Result<(), String>,
) -> String {
    let mut last = String::new();
    for _ in 0..4 {
        let dom = browse(browser, profile, url, "--dump-dom");
        match pred(&dom) {
            Ok(()) => return dom,
            Err(why) => last = why,
        }
    }
    panic!("the page never showed {what}: {last}");
}

fn shows_config(dom: &str, num: u64, owners: &[u64]) -> Result<(), String> {
    let shown = text_of(dom, "config-num");
    if shown != num.to_string() {
        return Err(format!("configuration {shown}, not {num}"));
    }
    let cells = elements(dom, "shard");
    if cells.len() != owners.len() {
        return Err(format!("{} shard cells, not {}", cells.len(), owners.len()));
    }
    for (shard, owner) in owners.iter().enumerate() {
        let cell = &cells[shard];
        if cell["data-shard"] != shard.to_string() || cell["data-gid"] != owner.to_string() {
            return Err(format!("shard {shard} shown as {cell:?}, owner {owner}"));
        }
    }
    Ok(())
}

fn shows_leaders(dom: &str, leaders: &BTreeMap<u64, u64>) -> Result<(), String> {
    let groups = elements(dom, "group");
    let shown: Vec<&str> = groups.iter().map(|g| g["data-gid"].as_str()).collect();
    if shown != ["0", "1", "2"] {
        return Err(format!("groups {shown:?}"));
    }
    for (gid, leader) in leaders {
        let g = groups
            .iter()
            .find(|g| g["data-gid"] == gid.to_string())
            .unwrap();
        if g["data-leader"] != leader.to_string() {
            return Err(format!(
                "group {gid} shown led by {}, not {leader}",
                g["data-leader"]
            ));
        }
    }
    if !["1", "2", "3"].contains(&groups[0]["data-leader"].as_str()) {
        return Err(format!("controller leader {:?}", groups[0]["data-leader"]));
    }
    Ok(())
}

#[test]
fn the_dashboard_shows_the_cluster_in_a_real_browser() {
    let Some(browser) = find_chromium() else {
        assert_ne!(
            std::env::var("CI").as_deref(),
            Ok("true"),
            "CI=true but no Chromium: install Debian's `chromium` (scripts/test.sh does) or set QKV_CHROMIUM"
        );
        eprintln!("SKIPPED: no chromium on PATH (set QKV_CHROMIUM or install Debian's `chromium`)");
        return;
    };
    let started = Instant::now();
    let mut c = ProcCluster::new(&three_member_groups(&[1, 2]), SHARDS, "warn");
    for n in c.nodes() {
        c.start(n, &[1, 2, 3], false);
    }
    ok(&c.run(
        CTRL_CLIENT,
        &[
            "--timeout",
            "20",
            "join",
            &format!("1={}", c.addrs(1, &[1, 2, 3]).join(",")),
            &format!("2={}", c.addrs(2, &[1, 2, 3]).join(",")),
        ],
    ));
    let leaders = settled(&c);
    let (num, owners) = config(&c);
    let url = format!("http://127.0.0.1:{}/dashboard", c.admin_port((1, 1)));
    let profile = c.dir.path().join("chromium-profile");

    // Groups, leaders, every member up, the shard map.
    let dom = dom_until(&browser, &profile, &url, "the cluster", |dom| {
        shows_config(dom, num, &owners)?;
        shows_leaders(dom, &leaders)?;
        let members = elements(dom, "member");
        if members.len() != 9 || members.iter().any(|m| m["data-up"] != "true") {
            return Err(format!("members {members:?}"));
        }
        Ok(())
    });
    assert_eq!(text_of(&dom, "served-by"), "group 1, member 1");

    // A shard moves from group 1 to group 2: the map changes, and so does the event list.
    let moved = owners.iter().position(|g| *g == 1).unwrap();
    let after = ok(&c.run(
        CTRL_CLIENT,
        &["--timeout", "20", "move", &moved.to_string(), "2"],
    ));
    assert_eq!(after.trim(), format!("configuration {}", num + 1));
    let leaders = settled(&c);
    let (num, owners) = config(&c);
    assert_eq!(owners[moved], 2);
    dom_until(&browser, &profile, &url, "the moved shard", |dom| {
        shows_config(dom, num, &owners)?;
        shows_leaders(dom, &leaders)?;
        let event = format!("configuration {num}: shard {moved} → group 2");
        if !dom.contains(&event) {
            return Err(format!("no event {event:?}"));
        }
        Ok(())
    });

    // A member that is down shows as down, not as a blank.
    c.kill((2, 3));
    dom_until(
        &browser,
        &profile,
        &url,
        "member 3 of group 2 down",
        |dom| {
            let rows = elements(dom, "member");
            let down: Vec<_> = rows.iter().filter(|m| m["data-up"] == "false").collect();
            match down.as_slice() {
                [m] if m["data-id"] == "3" && m["class"].contains("down") => {}
                _ => return Err(format!("down members {down:?}")),
            }
            if !dom.contains("down: ") {
                return Err("no reason shown for the down member".into());
            }
            Ok(())
        },
    );

    let shot = PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join("dashboard.png");
    let _ = std::fs::remove_file(&shot);
    browse(
        &browser,
        &profile,
        &url,
        &format!("--screenshot={}", shot.display()),
    );
    let png = std::fs::read(&shot).unwrap();
    assert!(
        png.starts_with(b"\x89PNG\r\n\x1a\n") && png.len() > 20_000,
        "{}",
        png.len()
    );
    eprintln!("screenshot: {}", shot.display());
    assert!(started.elapsed() < Duration::from_secs(90));
}
