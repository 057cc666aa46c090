//! Cursor pagination as Letta does it: `before`/`after` are ids of items,
//! `limit` caps the page, `order` is `asc` or `desc` by creation.

use serde_json::Value;

/// Largest page a client may ask for.
pub const PAGE_LIMIT_COUNT_MAX: usize = 1_000;

#[derive(Debug, Clone, PartialEq)]
pub struct Page {
    pub before: Option<String>,
    pub after: Option<String>,
    pub limit: usize,
    pub descending: bool,
}

/// The page of `items` (given oldest first) that `page` selects; an id
/// may repeat (Letta messages of one step share it): `after` skips past its
/// last occurrence, `before` stops at its first. An unknown cursor selects
/// nothing.
pub fn paginate<T>(mut items: Vec<T>, id: impl Fn(&T) -> &str, page: &Page) -> Vec<T> {
    if page.descending {
        items.reverse();
    }
    let mut start = 0;
    let mut end = items.len();
    if let Some(after) = &page.after {
        match items.iter().rposition(|item| id(item) == after) {
            Some(position) => start = position + 1,
            None => return Vec::new(),
        }
    }
    if let Some(before) = &page.before {
        match items.iter().position(|item| id(item) == before) {
            Some(position) => end = position,
            None => return Vec::new(),
        }
    }
    if start >= end {
        return Vec::new();
    }
    items.into_iter().skip(start).take((end - start).min(page.limit)).collect()
}

/// The `id` field of a rendered JSON item.
pub fn json_id(item: &Value) -> &str {
    item["id"].as_str().unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn page(after: Option<&str>, before: Option<&str>, limit: usize, descending: bool) -> Page {
        Page { after: after.map(str::to_string), before: before.map(str::to_string), limit, descending }
    }

    #[test]
    fn cursors_and_order_select_the_right_slice() {
        let items: Vec<String> = ["a", "b", "c", "d", "e"].iter().map(|s| s.to_string()).collect();
        let ids = |p: &Page| paginate(items.clone(), |s: &String| s.as_str(), p);
        assert_eq!(ids(&page(None, None, 2, false)), ["a", "b"]);
        assert_eq!(ids(&page(Some("b"), None, 2, false)), ["c", "d"]);
        assert_eq!(ids(&page(Some("e"), None, 2, false)), Vec::<String>::new());
        assert_eq!(ids(&page(None, Some("c"), 10, false)), ["a", "b"]);
        assert_eq!(ids(&page(None, None, 2, true)), ["e", "d"]);
        assert_eq!(ids(&page(Some("d"), None, 10, true)), ["c", "b", "a"]);
        assert_eq!(ids(&page(Some("zz"), None, 10, false)), Vec::<String>::new());
    }

    #[test]
    fn repeated_ids_page_past_the_whole_group() {
        let items = vec!["a", "b", "b", "c"];
        let page = page(Some("b"), None, 10, false);
        assert_eq!(paginate(items, |s| s, &page), ["c"]);
    }
}
