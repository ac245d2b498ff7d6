//! A tag list: the upstream's, or the cached tags when it cannot answer.
//!
//! Remote first, like a tag: an upstream that answers decides the list;
//! one that fails for a while (a timeout, a 5xx) leaves the tags hoard has
//! cached for the repository. An upstream that answers "no such
//! repository" (or anything not transient) is believed.

use super::Target;
use crate::cache::Cache;
use crate::upstream;

/// Upstream pages of a tag list followed at most, so a registry that pages
/// in small steps cannot keep one request busy forever.
const MAX_UPSTREAM_PAGES: usize = 20;

/// Every tag of `target`, sorted: the upstream's whole list (its own pages
/// followed), else, when the upstream failed transiently and some tags of
/// the repository are cached, those. Otherwise the upstream's error.
pub async fn tags(cache: &Cache, target: &Target) -> Result<Vec<String>, upstream::Error> {
    match upstream_tags(target).await {
        Ok(all) => Ok(all),
        Err(e) => {
            let cached = cache.tags_of(target.upstream.name(), &target.repo);
            if cached.is_empty() || !e.is_transient() {
                return Err(e);
            }
            Ok(cached)
        }
    }
}

/// Every tag the upstream lists, sorted, its own pages followed.
async fn upstream_tags(target: &Target) -> Result<Vec<String>, upstream::Error> {
    let mut all = Vec::new();
    let mut query = String::new();
    for _ in 0..MAX_UPSTREAM_PAGES {
        let (bytes, link) = target.upstream.tags_list(&target.repo, &query).await?;
        let page: TagPage = serde_json::from_slice(&bytes)
            .map_err(|e| upstream::Error::Protocol(format!("tag list is not JSON: {e}")))?;
        let got = page.tags.unwrap_or_default();
        let empty = got.is_empty();
        all.extend(got);
        match link.as_ref().and_then(|l| next_query(l.to_str().ok()?)) {
            Some(q) if !empty && q != query => query = q,
            _ => break,
        }
    }
    all.sort();
    all.dedup();
    Ok(all)
}

/// The body of a tag list (`tags` is `null` for an empty repository on
/// some registries).
#[derive(serde::Deserialize)]
struct TagPage {
    tags: Option<Vec<String>>,
}

/// The query of a `Link: </v2/...?last=x&n=y>; rel="next"` header.
fn next_query(link: &str) -> Option<String> {
    let target = link.split('>').next()?.trim().strip_prefix('<')?;
    Some(target.split_once('?')?.1.to_owned())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn next_query_of_a_link() {
        assert_eq!(
            next_query("</v2/a/tags/list?last=b&n=2>; rel=\"next\"").as_deref(),
            Some("last=b&n=2")
        );
        assert_eq!(next_query("garbage"), None);
    }
}
