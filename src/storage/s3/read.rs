//! Reading blobs from the bucket without a total time limit, but not
//! forever: a read that waits too long for its next chunk ends in an error.

use std::io;
use std::time::Duration;

use bytes::Bytes;
use futures_util::StreamExt;

/// The longest a blob read from the bucket may wait for its next chunk.
/// Reads have no total time limit (a large layer takes what it takes), so
/// this is what ends a read from a server that stopped sending.
const READ_IDLE: Duration = Duration::from_secs(30);

/// `body`, ending with a `TimedOut` error when no chunk came for
/// [`READ_IDLE`].
pub fn idle_bounded(body: Chunks) -> Chunks {
    idle_bounded_after(body, READ_IDLE)
}

type Chunks = futures_util::stream::BoxStream<'static, io::Result<Bytes>>;

fn idle_bounded_after(body: Chunks, idle: Duration) -> Chunks {
    futures_util::stream::unfold(Some(body), move |body| async move {
        let mut body = body?;
        match tokio::time::timeout(idle, body.next()).await {
            Ok(Some(item)) => Some((item, Some(body))),
            Ok(None) => None,
            Err(_) => Some((
                Err(io::Error::new(
                    io::ErrorKind::TimedOut,
                    format!("the bucket sent nothing for {idle:?}"),
                )),
                None,
            )),
        }
    })
    .boxed()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_read_that_stalls_ends_in_an_error_not_a_hang() {
        let first: io::Result<Bytes> = Ok(Bytes::from_static(b"a"));
        let stalled = futures_util::stream::iter([first])
            .chain(futures_util::stream::pending())
            .boxed();
        let mut read = idle_bounded_after(stalled, Duration::from_millis(50));
        assert_eq!(read.next().await.unwrap().unwrap(), "a");
        let err = read.next().await.unwrap().unwrap_err();
        assert_eq!(err.kind(), io::ErrorKind::TimedOut);
        assert!(read.next().await.is_none(), "nothing after the error");
    }
}
