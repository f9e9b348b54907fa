//! A deterministic key/value state machine for raft-core tests.

use std::collections::BTreeMap;

use quorumkv_raft_core::{
    read_all, BytesSource, SmError, SnapshotChunks, SnapshotSource, StateMachine,
};

/// Commands of the test state machine.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum KvCommand {
    /// Set `key` to `value`; responds with the previous value.
    Put { key: String, value: String },
    /// Append `value` to `key`; responds with the new value.
    Append { key: String, value: String },
    /// Arbitrary bytes of the given size (for growing the log in tests); responds empty.
    Pad(usize),
}

impl KvCommand {
    pub fn encode(&self) -> Vec<u8> {
        let (tag, key, value) = match self {
            KvCommand::Put { key, value } => (b'P', key.as_str(), value.as_str()),
            KvCommand::Append { key, value } => (b'A', key.as_str(), value.as_str()),
            KvCommand::Pad(n) => return [vec![b'X'], vec![0u8; *n]].concat(),
        };
        let mut out = vec![tag];
        out.extend_from_slice(&(key.len() as u32).to_be_bytes());
        out.extend_from_slice(key.as_bytes());
        out.extend_from_slice(value.as_bytes());
        out
    }

    pub fn decode(b: &[u8]) -> Option<Self> {
        let (&tag, rest) = b.split_first()?;
        if tag == b'X' {
            return Some(KvCommand::Pad(rest.len()));
        }
        let klen = u32::from_be_bytes(rest.get(..4)?.try_into().ok()?) as usize;
        let key = String::from_utf8(rest.get(4..4 + klen)?.to_vec()).ok()?;
        let value = String::from_utf8(rest.get(4 + klen..)?.to_vec()).ok()?;
        match tag {
            b'P' => Some(KvCommand::Put { key, value }),
            b'A' => Some(KvCommand::Append { key, value }),
            _ => None,
        }
    }
}

/// The state: a map, the last applied index, and any apply-order violation seen.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct KvStateMachine {
    pub data: BTreeMap<String, String>,
    pub last_index: u64,
    /// Number of commands applied to this state (carried in snapshots).
    pub applied_commands: u64,
    /// Each entry describes an index applied twice or out of order. Must stay empty.
    pub violations: Vec<String>,
}

impl KvStateMachine {
    pub fn get(&self, key: &str) -> Option<&String> {
        self.data.get(key)
    }
}

fn put_bytes(out: &mut Vec<u8>, b: &[u8]) {
    out.extend_from_slice(&(b.len() as u32).to_be_bytes());
    out.extend_from_slice(b);
}

fn take_bytes<'a>(b: &mut &'a [u8]) -> Result<&'a [u8], String> {
    let n = u32::from_be_bytes(
        b.get(..4)
            .ok_or("truncated")?
            .try_into()
            .map_err(|_| "truncated")?,
    ) as usize;
    let v = b.get(4..4 + n).ok_or("truncated")?;
    *b = &b[4 + n..];
    Ok(v)
}

impl StateMachine for KvStateMachine {
    fn apply(&mut self, index: u64, command: &[u8]) -> Result<Vec<u8>, SmError> {
        if index <= self.last_index {
            self.violations
                .push(format!("index {index} applied after {}", self.last_index));
        }
        self.last_index = index;
        self.applied_commands += 1;
        Ok(match KvCommand::decode(command) {
            Some(KvCommand::Put { key, value }) => self
                .data
                .insert(key, value)
                .unwrap_or_default()
                .into_bytes(),
            Some(KvCommand::Append { key, value }) => {
                let v = self.data.entry(key).or_default();
                v.push_str(&value);
                v.clone().into_bytes()
            }
            Some(KvCommand::Pad(_)) => Vec::new(),
            None => b"bad command".to_vec(),
        })
    }

    fn snapshot(&self) -> Result<Box<dyn SnapshotSource>, SmError> {
        Ok(Box::new(BytesSource::new(self.to_bytes())))
    }

    fn restore(&mut self, _index: u64, snapshot: &mut dyn SnapshotChunks) -> Result<(), SmError> {
        let bytes = read_all(snapshot)?;
        self.restore_bytes(&bytes).map_err(SmError::from)
    }
}

impl KvStateMachine {
    /// The whole state as bytes (the snapshot).
    pub fn to_bytes(&self) -> Vec<u8> {
        let mut out = Vec::new();
        out.extend_from_slice(&self.last_index.to_be_bytes());
        out.extend_from_slice(&self.applied_commands.to_be_bytes());
        out.extend_from_slice(&(self.data.len() as u32).to_be_bytes());
        for (k, v) in &self.data {
            put_bytes(&mut out, k.as_bytes());
            put_bytes(&mut out, v.as_bytes());
        }
        out
    }

    fn restore_bytes(&mut self, snapshot: &[u8]) -> Result<(), String> {
        let mut b = snapshot;
        let head = b.get(..20).ok_or("snapshot truncated")?;
        let last_index = u64::from_be_bytes(head[..8].try_into().unwrap());
        let applied_commands = u64::from_be_bytes(head[8..16].try_into().unwrap());
        let n = u32::from_be_bytes(head[16..20].try_into().unwrap());
        b = &b[20..];
        let mut data = BTreeMap::new();
        for _ in 0..n {
            let k = String::from_utf8(take_bytes(&mut b)?.to_vec()).map_err(|e| e.to_string())?;
            let v = String::from_utf8(take_bytes(&mut b)?.to_vec()).map_err(|e| e.to_string())?;
            data.insert(k, v);
        }
        *self = KvStateMachine {
            data,
            last_index,
            applied_commands,
            violations: std::mem::take(&mut self.violations),
        };
        Ok(())
    }
}
