//! The contract between the raft core and the state machine it replicates.

/// What a state machine's operations fail with: its store failed (I/O) or bytes are corrupt.
/// Boxed so that each state machine keeps its own typed error (and its source chain); the
/// core wraps it in [`crate::RaftError::StateMachine`] and stops the member.
pub type SmError = Box<dyn std::error::Error + Send + Sync + 'static>;

/// A point-in-time view of a state machine's state, read in pieces on a thread other than the
/// driver's (a snapshot is written to a file, or restored from one, while the member goes on
/// ticking, voting and applying).
pub trait SnapshotSource: Send {
    /// The next piece of the state, of at most about `max_bytes`, or `None` at the end. Pieces
    /// are opaque to the core: only the state machine that produced them reads them.
    fn next_chunk(&mut self, max_bytes: usize) -> Result<Option<Vec<u8>>, SmError>;
}

/// The pieces of a snapshot being restored, in the order they were produced.
pub trait SnapshotChunks {
    /// The next piece, or `None` at the end.
    fn next_chunk(&mut self) -> Result<Option<Vec<u8>>, SmError>;
}

/// A snapshot held in memory as one byte string, handed out in pieces (for state machines
/// whose whole state is small, like the shard controller's).
pub struct BytesSource {
    bytes: Vec<u8>,
    at: usize,
}

impl BytesSource {
    pub fn new(bytes: Vec<u8>) -> Self {
        BytesSource { bytes, at: 0 }
    }
}

impl SnapshotSource for BytesSource {
    fn next_chunk(&mut self, max_bytes: usize) -> Result<Option<Vec<u8>>, SmError> {
        if self.at >= self.bytes.len() {
            return Ok(None);
        }
        let end = (self.at + max_bytes.max(1)).min(self.bytes.len());
        let chunk = self.bytes[self.at..end].to_vec();
        self.at = end;
        Ok(Some(chunk))
    }
}

/// Concatenates every piece of a snapshot (the restore side of [`BytesSource`]).
pub fn read_all(chunks: &mut dyn SnapshotChunks) -> Result<Vec<u8>, SmError> {
    let mut out = Vec::new();
    while let Some(c) = chunks.next_chunk()? {
        out.extend_from_slice(&c);
    }
    Ok(out)
}

/// How a state machine keeps its state between restarts.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Durability {
    /// In memory only: the core writes snapshot files and restores the latest one (plus the
    /// log after it) on restart.
    InMemory,
    /// In a store of its own that [`StateMachine::sync`] makes durable: the log is compacted
    /// only up to the index the store has made durable, and snapshot files are written only
    /// to send to members that fell behind.
    OwnStore,
}

/// A deterministic state machine replicated by Raft.
///
/// # Determinism contract
///
/// Every member applies the same committed commands in the same order, and they must all end in
/// the same state and return the same responses. So `apply` must depend only on the current
/// state, the index and the command bytes: no wall clock, no randomness that is not seeded from
/// the log, no I/O whose result can differ between members, no iteration over `HashMap`s whose
/// order leaks into the state or the response. Time, if the machine needs it, must come in
/// through the commands themselves (a proposer-stamped timestamp), never from the applier.
///
/// A snapshot restored on another member must yield a state that behaves identically to the
/// original for every later command.
///
/// # Durability
///
/// - [`Durability::InMemory`] (the default): the core periodically writes a snapshot file with
///   the index it reflects, compacts the log behind it, and on restart restores the latest one
///   and re-applies the log after it: nothing lost, nothing applied twice to the same state.
/// - [`Durability::OwnStore`]: the state machine writes the effects of each run of applies and
///   the index of the last one as one unit, at the latest in [`StateMachine::end_of_batch`];
///   after a crash its store holds the effects of some prefix of the log (it may lose a suffix,
///   never a middle part) and reports that prefix's end in [`StateMachine::persisted_index`].
///   [`StateMachine::sync`] makes everything written so far durable; the core compacts the log
///   only up to an index a completed sync covered, so the entries a crash can take from the
///   store are always still in the log, and re-applies the log after `persisted_index` on
///   restart.
///
/// Errors mean the state machine's own storage failed or bytes are corrupt: the member stops
/// rather than continue from a state that may differ from the other replicas'.
pub trait StateMachine: Send + Sync + 'static {
    /// Applies the committed command at `index` (indices arrive strictly increasing, without
    /// gaps for normal entries; configuration changes and empty leader entries are skipped) and
    /// returns the response for the proposer.
    fn apply(&mut self, index: u64, command: &[u8]) -> Result<Vec<u8>, SmError>;

    /// A point-in-time view of the state as of the last applied index. Taken on the driver
    /// thread, so it must be cheap (no copy of a large state: a store-backed machine keeps the
    /// view consistent while later commands apply); read on another thread.
    fn snapshot(&self) -> Result<Box<dyn SnapshotSource>, SmError>;

    /// Replaces the complete state with a snapshot (possibly produced on another member)
    /// that reflects the log up to `index`, read piece by piece.
    fn restore(&mut self, index: u64, snapshot: &mut dyn SnapshotChunks) -> Result<(), SmError>;

    /// How the state survives restarts (see the trait docs).
    fn durability(&self) -> Durability {
        Durability::InMemory
    }

    /// Called after each run of `apply` calls, before any read is served, snapshot taken or
    /// reply sent for them: a state machine with its own store writes the run's effects here
    /// (one write per run instead of one per command).
    fn end_of_batch(&mut self) -> Result<(), SmError> {
        Ok(())
    }

    /// The index of the last command whose effects are in the state machine's own store, read
    /// once when the member starts. 0 for a state machine kept in memory.
    fn persisted_index(&self) -> u64 {
        0
    }

    /// A handle that makes the store durable ([`Durability::OwnStore`] only), called on a
    /// background thread while the driver goes on applying: everything the store held when
    /// `sync` started is durable when it returns.
    fn syncer(&self) -> Option<Box<dyn StoreSyncer>> {
        None
    }

    /// Called once when the member stops: a state machine with its own store closes it here
    /// (releasing its files, so the same directory can be opened again in this process).
    /// Reads made after this may fail.
    fn close(&mut self) {}
}

/// Makes a state machine's own store durable (see [`StateMachine::syncer`]).
pub trait StoreSyncer: Send {
    /// Flushes and fsyncs every file of the store (and the directories holding new files).
    fn sync(&mut self) -> Result<(), SmError>;
}
