//! `Range: bytes=...` for blob requests.

use super::ApiError;

/// A satisfiable range: `start..end` (end exclusive).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ByteRange {
    /// First byte.
    pub start: u64,
    /// One past the last byte.
    pub end: u64,
}

/// Parses a `Range` header against a blob of `size` bytes. `Ok(None)` when
/// there is no header (the whole blob). Single ranges only: `bytes=N-`,
/// `bytes=N-M`, `bytes=-N`. Anything else is a 416 with the size.
pub fn parse(header: Option<&str>, size: u64) -> Result<Option<ByteRange>, ApiError> {
    let Some(h) = header else { return Ok(None) };
    let bad = |why: &str| ApiError::range(format!("Range {:?}: {why}", truncate(h)), Some(size));
    let spec = h
        .trim()
        .strip_prefix("bytes=")
        .ok_or_else(|| bad("only byte ranges are supported"))?;
    if spec.contains(',') {
        return Err(bad("multiple ranges are not supported"));
    }
    let (a, b) = spec.split_once('-').ok_or_else(|| bad("expected N-M"))?;
    let num = |s: &str| s.trim().parse::<u64>().map_err(|_| bad("not a number"));
    let (start, end) = match (a.trim().is_empty(), b.trim().is_empty()) {
        (true, true) => return Err(bad("empty range")),
        (true, false) => {
            let n = num(b)?;
            if n == 0 {
                return Err(bad("empty suffix range"));
            }
            (size.saturating_sub(n), size)
        }
        (false, true) => (num(a)?, size),
        (false, false) => {
            let (s, e) = (num(a)?, num(b)?);
            if e < s {
                return Err(bad("last byte before first byte"));
            }
            (s, e.saturating_add(1).min(size))
        }
    };
    if start >= size {
        return Err(bad("starts at or past the end of the blob"));
    }
    Ok(Some(ByteRange { start, end }))
}

fn truncate(s: &str) -> String {
    s.chars().take(60).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn r(h: &str, size: u64) -> Option<(u64, u64)> {
        parse(Some(h), size)
            .ok()
            .flatten()
            .map(|r| (r.start, r.end))
    }

    #[test]
    fn ranges() {
        assert_eq!(parse(None, 10).unwrap(), None);
        assert_eq!(r("bytes=0-", 10), Some((0, 10)));
        assert_eq!(r("bytes=3-", 10), Some((3, 10)));
        assert_eq!(r("bytes=3-5", 10), Some((3, 6)));
        assert_eq!(r("bytes=3-500", 10), Some((3, 10)));
        assert_eq!(r("bytes=-4", 10), Some((6, 10)));
        assert_eq!(r("bytes=-40", 10), Some((0, 10)));
        for bad in [
            "bytes=10-",
            "bytes=5-3",
            "bytes=a-",
            "bytes=0-1,3-4",
            "items=0-1",
            "bytes=-0",
            "bytes=-",
            "bytes=0-1-2",
        ] {
            let e = parse(Some(bad), 10).unwrap_err();
            assert_eq!(e.status, http::StatusCode::RANGE_NOT_SATISFIABLE, "{bad}");
            assert_eq!(e.range_size, Some(10));
        }
        assert!(parse(Some("bytes=0-"), 0).is_err());
    }
}
