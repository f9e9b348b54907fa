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
/// The raft core keeps the state machine's durability for it: it persists the committed log,
/// and it persists `snapshot()` bytes together with the index they reflect in one atomic write.
/// On restart it calls `restore` with the latest snapshot and re-applies the committed entries
/// after it, so the rebuilt state is exactly the state at the commit index: nothing lost and no
/// command's effect applied twice. A state machine therefore keeps its state in memory and
/// must not write it anywhere else itself.
pub trait StateMachine: Send + Sync + 'static {
    /// Applies the committed command at `index` (indices arrive strictly increasing, without
    /// gaps for normal entries; configuration changes and empty leader entries are skipped) and
    /// returns the response for the proposer.
    fn apply(&mut self, index: u64, command: &[u8]) -> Vec<u8>;

    /// Serializes the complete state as of the last applied index.
    fn snapshot(&self) -> Vec<u8>;

    /// Replaces the complete state with a snapshot produced by `snapshot` (possibly on another
    /// member). An error means the bytes are corrupt; the node then refuses to start.
    fn restore(&mut self, snapshot: &[u8]) -> Result<(), String>;
}
