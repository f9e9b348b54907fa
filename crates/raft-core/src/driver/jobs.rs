//! Work the driver hands to a background thread so that it never blocks ticking, voting and
//! applying on it: writing a snapshot file from the state machine's point-in-time view,
//! syncing the state machine's own store before the log is compacted, purging the log's old
//! files. Results come back through the member's control channel ([`crate::Mailbox`]) and are
//! acted on by the driver; one job runs at a time.
//!
//! Tests of the driver run jobs inline ([`Worker::inline`]), so that a scenario stays
//! deterministic: the result is queued before the driver's next step.

use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use crossbeam_channel::Sender;

use crate::error::RaftError;
use crate::mailbox::Mailbox;
use crate::state_machine::{SnapshotSource, StoreSyncer};
use crate::storage::snapshot::{self, SnapshotHeader};

/// Why a snapshot file is written.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Purpose {
    /// To compact the log behind it (a state machine kept in memory).
    Compaction,
    /// To send to a member that fell behind.
    Send,
}

pub(crate) enum Job {
    WriteSnapshot {
        dir: PathBuf,
        header: SnapshotHeader,
        source: Box<dyn SnapshotSource>,
        purpose: Purpose,
    },
    SyncStore {
        header: SnapshotHeader,
        syncer: Box<dyn StoreSyncer>,
    },
    Purge {
        engine: Arc<raft_engine::Engine>,
    },
}

/// What a job achieved.
pub(crate) enum JobDone {
    SnapshotWritten {
        header: SnapshotHeader,
        file: String,
        size: u64,
        purpose: Purpose,
        took: std::time::Duration,
    },
    /// The store is durable up to `header.index`.
    StoreSynced {
        header: SnapshotHeader,
        took: std::time::Duration,
    },
    Purged,
    Failed {
        job: &'static str,
        error: RaftError,
    },
}

fn run(job: Job, cancel: &AtomicBool) -> JobDone {
    let started = std::time::Instant::now();
    match job {
        Job::WriteSnapshot {
            dir,
            header,
            mut source,
            purpose,
        } => match snapshot::write_from_source(&dir, &header, source.as_mut(), cancel) {
            Ok((file, size)) => JobDone::SnapshotWritten {
                header,
                file,
                size,
                purpose,
                took: started.elapsed(),
            },
            Err(error) => JobDone::Failed {
                job: "writing a snapshot",
                error,
            },
        },
        Job::SyncStore { header, mut syncer } => match syncer.sync() {
            Ok(()) => JobDone::StoreSynced {
                header,
                took: started.elapsed(),
            },
            Err(e) => JobDone::Failed {
                job: "syncing the state machine's store",
                error: RaftError::state_machine("syncing the state machine's store", e),
            },
        },
        Job::Purge { engine } => match engine.purge_expired_files() {
            Ok(_) => JobDone::Purged,
            Err(e) => JobDone::Failed {
                job: "purging old log files",
                error: RaftError::storage("raft log: purging old files", e),
            },
        },
    }
}

/// Runs jobs one at a time, on its own thread (or inline, for deterministic tests).
pub(crate) struct Worker {
    tx: Option<Sender<Job>>,
    thread: Option<std::thread::JoinHandle<()>>,
    mailbox: Mailbox,
    /// Set when the member stops: a snapshot being written is abandoned.
    cancel: Arc<AtomicBool>,
}

impl Worker {
    /// A worker thread named after member `id`.
    pub fn spawn(id: u64, mailbox: Mailbox) -> std::io::Result<Self> {
        let (tx, rx) = crossbeam_channel::unbounded::<Job>();
        let mb = mailbox.clone();
        let span = tracing::Span::current();
        let cancel = Arc::new(AtomicBool::new(false));
        let stop = cancel.clone();
        let thread = std::thread::Builder::new()
            .name(format!("raft-{id}-jobs"))
            .spawn(move || {
                let _enter = span.enter();
                for job in rx {
                    mb.job_done(run(job, &stop));
                }
            })?;
        Ok(Worker {
            tx: Some(tx),
            thread: Some(thread),
            mailbox,
            cancel,
        })
    }

    /// A worker that runs each job at once, on the caller's thread.
    #[cfg(test)]
    pub fn inline(mailbox: Mailbox) -> Self {
        Worker {
            tx: None,
            thread: None,
            mailbox,
            cancel: Arc::new(AtomicBool::new(false)),
        }
    }

    pub fn submit(&self, job: Job) {
        match &self.tx {
            Some(tx) => {
                if let Err(e) = tx.send(job) {
                    self.mailbox.job_done(run(e.into_inner(), &self.cancel));
                }
            }
            None => self.mailbox.job_done(run(job, &self.cancel)),
        }
    }
}

impl Drop for Worker {
    fn drop(&mut self) {
        // Abandon a snapshot being written (its temporary file is removed on the next open)
        // and wait for the job to return, so that the state machine's store is not closed
        // under it.
        self.cancel.store(true, Ordering::Relaxed);
        self.tx = None;
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}
