//! The contract between the raft core and the state machine it replicates.

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
/// `snapshot` followed by `restore` on another member must yield a state that behaves
/// identically to the original for every later command.
///
/// # Durability
///
/// The raft core persists the committed log, and it persists `snapshot()` bytes together with
/// the index they reflect in one atomic write. A state machine keeps its state in one of two
/// ways:
///
/// - **In memory** (the default): on restart the core calls `restore` with the latest snapshot
///   and re-applies the committed entries after it, so the rebuilt state is exactly the state
///   at the commit index: nothing lost and no command's effect applied twice.
/// - **In its own store** (e.g. a sled tree): the effects of the commands applied and the
///   index of the last one are written as one unit, at the latest in
///   [`StateMachine::end_of_batch`], and [`StateMachine::persisted_index`] reports that index
///   when the member starts. The store may lose a suffix of its writes in a crash, but never a middle part (it
///   recovers to some earlier applied index, with exactly that index's effects). On restart the
///   core restores the latest snapshot only if the store is older than it, and re-applies only
///   the entries after the store's index. The log is never compacted past the latest
///   snapshot, so the entries the store may have lost are always there to re-apply.
///
/// Errors from `apply`, `snapshot` and `restore` mean the state machine's own storage failed
/// or the bytes are corrupt: the member stops rather than continue from a state that may
/// differ from the other replicas'.
pub trait StateMachine: Send + Sync + 'static {
    /// Applies the committed command at `index` (indices arrive strictly increasing, without
    /// gaps for normal entries; configuration changes and empty leader entries are skipped) and
    /// returns the response for the proposer.
    fn apply(&mut self, index: u64, command: &[u8]) -> Result<Vec<u8>, String>;

    /// Serializes the complete state as of the last applied index.
    fn snapshot(&self) -> Result<Vec<u8>, String>;

    /// Replaces the complete state with a snapshot produced by `snapshot` (possibly on another
    /// member) that reflects the log up to `index`. An error means the bytes are corrupt or the
    /// store failed; the node then stops (or refuses to start).
    fn restore(&mut self, index: u64, snapshot: &[u8]) -> Result<(), String>;

    /// Called after each run of `apply` calls, before any read is served, snapshot taken or
    /// reply sent for them: a state machine with its own store writes the run's effects here
    /// (one write per run instead of one per command). An error stops the member.
    fn end_of_batch(&mut self) -> Result<(), String> {
        Ok(())
    }

    /// The index of the last command whose effects are in the state machine's own store, read
    /// once when the member starts. 0, the default, for a state machine kept in memory.
    fn persisted_index(&self) -> u64 {
        0
    }

    /// Called once when the member stops: a state machine with its own store closes it here
    /// (releasing its files, so the same directory can be opened again in this process).
    /// Reads made after this may fail.
    fn close(&mut self) {}
}
