//! How an export or import reports its progress: a plain trait the caller
//! implements (the CLI draws a bar or logs a line; the server and tests pass
//! [`Silent`]), so the bundle code knows nothing of terminals.

/// A byte counter the work reports to. Called from the blocking thread that
/// reads or writes the archive, once per chunk: implementations keep it cheap.
pub trait Progress: Send + Sync {
    /// The work starts: `total` bytes are expected.
    fn start(&self, _total: u64) {}
    /// What is being worked on now (an entry, a digest).
    fn item(&self, _item: &str) {}
    /// `n` more bytes are done.
    fn add(&self, _n: u64) {}
    /// The work is over (successful or not).
    fn finish(&self) {}
}

/// Reports nothing: the operator API's streamed export, tests.
pub struct Silent;

impl Progress for Silent {}
