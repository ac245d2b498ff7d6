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

/// Parses a `Range` header against a blob of `size` bytes. `Ok(None)`
/// means "send the whole blob": no header, or one hoard ignores as RFC 9110
/// §14.2 allows and asks — not a byte range, not valid syntax, or several
/// ranges. Single ranges are `bytes=N-`, `bytes=N-M`, `bytes=-N`; a valid one
/// that selects nothing of the blob (starts at or past its end, or
/// `bytes=-0`) is a 416 with the size.
pub fn parse(header: Option<&str>, size: u64) -> Result<Option<ByteRange>, ApiError> {
    let Some(h) = header else { return Ok(None) };
    let unsatisfiable =
        |why: &str| ApiError::range(format!("Range {:?}: {why}", truncate(h)), Some(size));
    let Some(spec) = h.trim().strip_prefix("bytes=") else {
        return Ok(None);
    };
    if spec.contains(',') {
        return Ok(None);
    }
    let Some((a, b)) = spec.split_once('-') else {
        return Ok(None);
    };
    let digits = |s: &str| {
        let s = s.trim();
        (!s.is_empty() && s.bytes().all(|c| c.is_ascii_digit()))
            .then(|| s.parse::<u64>().ok())
            .flatten()
    };
    let (start, end) = match (a.trim().is_empty(), b.trim().is_empty()) {
        (true, true) => return Ok(None),
        (true, false) => {
            let Some(n) = digits(b) else { return Ok(None) };
            if n == 0 {
                return Err(unsatisfiable("empty suffix range"));
            }
            (size.saturating_sub(n), size)
        }
        (false, true) => match digits(a) {
            Some(s) => (s, size),
            None => return Ok(None),
        },
        (false, false) => {
            let (Some(s), Some(e)) = (digits(a), digits(b)) else {
                return Ok(None);
            };
            if e < s {
                return Ok(None);
            }
            (s, e.saturating_add(1).min(size))
        }
    };
    if start >= size {
        return Err(unsatisfiable("starts at or past the end of the blob"));
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
        // Valid but selecting nothing: 416 with the size.
        for bad in ["bytes=10-", "bytes=10-12", "bytes=-0"] {
            let e = parse(Some(bad), 10).unwrap_err();
            assert_eq!(e.status, http::StatusCode::RANGE_NOT_SATISFIABLE, "{bad}");
            assert_eq!(e.range_size, Some(10));
        }
        assert!(parse(Some("bytes=0-"), 0).is_err());
        // Invalid or several ranges: ignored, the whole blob (RFC 9110).
        for ignored in [
            "bytes=5-3",
            "bytes=a-",
            "bytes=0-1,3-4",
            "items=0-1",
            "bytes=-",
            "bytes=0-1-2",
            "bytes=--5",
            "bytes=+1-2",
            "invalid",
        ] {
            assert_eq!(parse(Some(ignored), 10).unwrap(), None, "{ignored}");
        }
    }
}
