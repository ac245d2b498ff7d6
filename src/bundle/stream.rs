//! `hoard export --server URL`: the archive streamed from a running hoard.
//!
//! `hoard export` on the cache directory is refused while `hoard serve`
//! holds it. A running server exports through its operator API instead
//! (`POST /_hoard/export`): the archive is planned first, so a missing
//! image is an error answer before any byte is sent, then written by the
//! same code as the file export (same order, same headers, time 0: the
//! same content makes the same bytes) into a response body.
//!
//! Complete or nothing on both ends: the body ends cleanly only when the
//! writer finished without error; a failure mid-way aborts the response
//! (no terminating chunk), never a short 200 that looks whole. The CLI
//! writes what it receives beside the target and renames it into place
//! only after a clean end, so a broken stream leaves no file.

use std::io::{self, Write};
use std::path::Path;
use std::sync::Arc;

use bytes::Bytes;
use futures_util::{Stream, StreamExt};
use tokio::sync::{mpsc, oneshot};

use super::export::{self, Output, Partial, Planned, Summary};
use super::Error;
use crate::cache::Cache;

/// Chunks in flight between the writer and the response: with the
/// writer's 1 MiB buffer in front, a slow client holds at most a few MiB.
const CHUNKS_IN_FLIGHT: usize = 4;

/// The response header carrying the [`Summary`] as JSON (known from the
/// plan, before the first byte).
pub const SUMMARY_HEADER: &str = "hoard-export-summary";

/// The blocking side of the channel: what the tar writer writes into.
pub(super) struct ChannelWriter(mpsc::Sender<Bytes>);

impl ChannelWriter {
    pub(super) fn new(tx: mpsc::Sender<Bytes>) -> ChannelWriter {
        ChannelWriter(tx)
    }
}

impl Write for ChannelWriter {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        // Called from the blocking pool (the export runs there).
        self.0
            .blocking_send(Bytes::copy_from_slice(buf))
            .map_err(|_| io::Error::new(io::ErrorKind::BrokenPipe, "the client went away"))?;
        Ok(buf.len())
    }

    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

/// Writes `planned` in a task of its own and returns the archive as a
/// stream of chunks. The stream ends cleanly only when the whole archive
/// was written; otherwise its last item is the error.
pub fn archive(
    cache: Arc<Cache>,
    planned: Planned,
) -> impl Stream<Item = io::Result<Bytes>> + Send + 'static {
    let (tx, rx) = mpsc::channel(CHUNKS_IN_FLIGHT);
    let (done_tx, done_rx) = oneshot::channel::<Result<(), String>>();
    tokio::spawn(async move {
        let result = export::write(
            cache,
            planned,
            Output::Channel(tx),
            std::sync::Arc::new(super::progress::Silent),
        )
        .await;
        match &result {
            Ok(s) => tracing::info!(
                images = s.images,
                blobs = s.blobs,
                bytes = s.bytes,
                "archive streamed"
            ),
            Err(e) => tracing::warn!(error = %e, "export stream failed"),
        }
        let _ = done_tx.send(result.map(drop).map_err(|e| e.to_string()));
    });
    futures_util::stream::unfold(Some((rx, done_rx)), |state| async move {
        let (mut rx, done) = state?;
        if let Some(chunk) = rx.recv().await {
            return Some((Ok(chunk), Some((rx, done))));
        }
        // The writer let go of the channel: finished, failed or gone.
        let failed = match done.await {
            Ok(Ok(())) => return None,
            Ok(Err(e)) => e,
            Err(_) => "the export task stopped".to_owned(),
        };
        Some((Err(io::Error::other(failed)), None))
    })
}

/// Receives an archive from `body` into `output` (`-`: standard output):
/// written beside it and renamed into place after a clean end, so a
/// stream that breaks off leaves nothing behind.
pub async fn receive<S, E>(mut body: S, output: &Path) -> Result<u64, Error>
where
    S: Stream<Item = Result<Bytes, E>> + Unpin,
    E: std::fmt::Display,
{
    let broke = |e: &dyn std::fmt::Display| Error::File {
        path: output.to_owned(),
        source: io::Error::other(format!("the archive stream from hoard broke off: {e}")),
    };
    if output == Path::new("-") {
        use tokio::io::AsyncWriteExt;
        let mut out = tokio::io::stdout();
        let mut n = 0u64;
        while let Some(chunk) = body.next().await {
            let chunk = chunk.map_err(|e| broke(&e))?;
            out.write_all(&chunk).await.map_err(Error::file(output))?;
            n += chunk.len() as u64;
        }
        out.flush().await.map_err(Error::file(output))?;
        return Ok(n);
    }
    let partial = Partial::create(output)?;
    let file = partial.file()?;
    let mut file = tokio::fs::File::from_std(file);
    let mut n = 0u64;
    {
        use tokio::io::AsyncWriteExt;
        while let Some(chunk) = body.next().await {
            let chunk = chunk.map_err(|e| broke(&e))?;
            file.write_all(&chunk).await.map_err(Error::file(output))?;
            n += chunk.len() as u64;
        }
        file.flush().await.map_err(Error::file(output))?;
    }
    drop(file);
    let path = output.to_owned();
    super::blocking(move || partial.commit().map_err(Error::file(&path))).await?;
    Ok(n)
}

/// The summary a server sent in [`SUMMARY_HEADER`].
pub fn summary(headers: &http::HeaderMap) -> Option<Summary> {
    let v = headers.get(SUMMARY_HEADER)?.to_str().ok()?;
    serde_json::from_str(v).ok()
}
