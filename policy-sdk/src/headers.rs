//! A small HTTP header map: case-insensitive names, several values per name.

use std::fmt;

/// HTTP headers with case-insensitive names and several values per name.
///
/// Names are stored lower-case (as HTTP/2 and Envoy carry them); lookups ignore ASCII case.
/// Insertion order is kept, so the order of repeated values is preserved.
///
/// ```
/// use policy_sdk::HeaderMap;
///
/// let mut headers = HeaderMap::new();
/// headers.append("Accept", "text/html");
/// headers.append("accept", "application/json");
/// assert_eq!(headers.get("ACCEPT"), Some("text/html"));
/// assert_eq!(headers.get_all("accept").count(), 2);
/// headers.set("accept", "*/*");
/// assert_eq!(headers.get_all("accept").collect::<Vec<_>>(), ["*/*"]);
/// ```
#[derive(Clone, Default, PartialEq, Eq)]
pub struct HeaderMap {
    entries: Vec<(String, String)>,
    /// Values that are not UTF-8: outside the string view, kept for [`HeaderMap::get_all_bytes`].
    opaque: Vec<(String, Vec<u8>)>,
}

impl HeaderMap {
    /// An empty map; allocates nothing until the first insert.
    pub fn new() -> Self {
        Self::default()
    }

    /// The first value of `name`, if any.
    pub fn get(&self, name: &str) -> Option<&str> {
        self.entries
            .iter()
            .find(|(n, _)| n.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }

    /// Every value of `name`, in the order they were added.
    pub fn get_all<'a, 'n>(&'a self, name: &'n str) -> impl Iterator<Item = &'a str> + 'n
    where
        'a: 'n,
    {
        self.entries
            .iter()
            .filter(move |(n, _)| n.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }

    /// Whether `name` has at least one value, counting values that are not UTF-8 (which
    /// [`HeaderMap::get`] does not return).
    pub fn contains(&self, name: &str) -> bool {
        self.entries
            .iter()
            .any(|(n, _)| n.eq_ignore_ascii_case(name))
            || self
                .opaque
                .iter()
                .any(|(n, _)| n.eq_ignore_ascii_case(name))
    }

    /// Adds a value given as bytes: as text when it is UTF-8, otherwise outside the string view
    /// ([`HeaderMap::get`], [`HeaderMap::iter`] and [`HeaderMap::len`] do not see it; the proxy
    /// forwards it unchanged unless a policy sets or removes `name`).
    ///
    /// ```
    /// use policy_sdk::HeaderMap;
    ///
    /// let mut headers = HeaderMap::new();
    /// headers.append_bytes("x-raw", vec![0xff, 0x01]);
    /// assert_eq!(headers.get("x-raw"), None);
    /// assert!(headers.contains("x-raw"));
    /// assert_eq!(headers.get_all_bytes("x-raw").collect::<Vec<_>>(), [&[0xff, 0x01][..]]);
    /// ```
    pub fn append_bytes(&mut self, name: impl Into<String>, value: Vec<u8>) {
        match String::from_utf8(value) {
            Ok(text) => self.append(name, text),
            Err(e) => self.opaque.push((lower(name.into()), e.into_bytes())),
        }
    }

    /// Every value of `name` as bytes: the UTF-8 ones first, in order, then the others.
    pub fn get_all_bytes<'a, 'n>(&'a self, name: &'n str) -> impl Iterator<Item = &'a [u8]> + 'n
    where
        'a: 'n,
    {
        self.get_all(name).map(str::as_bytes).chain(
            self.opaque
                .iter()
                .filter(move |(n, _)| n.eq_ignore_ascii_case(name))
                .map(|(_, v)| v.as_slice()),
        )
    }

    /// Every `(name, value)` pair; names are lower-case.
    pub fn iter(&self) -> impl Iterator<Item = (&str, &str)> {
        self.entries.iter().map(|(n, v)| (n.as_str(), v.as_str()))
    }

    /// The number of `(name, value)` pairs in the string view.
    pub fn len(&self) -> usize {
        self.entries.len()
    }

    /// Whether the map holds no header at all (values that are not UTF-8 count).
    pub fn is_empty(&self) -> bool {
        self.entries.is_empty() && self.opaque.is_empty()
    }

    /// Replaces every value of `name` with `value`.
    pub fn set(&mut self, name: impl Into<String>, value: impl Into<String>) {
        let name = lower(name.into());
        self.remove(&name);
        self.entries.push((name, value.into()));
    }

    /// Adds `value` after the existing values of `name`.
    pub fn append(&mut self, name: impl Into<String>, value: impl Into<String>) {
        self.entries.push((lower(name.into()), value.into()));
    }

    /// Removes every value of `name` (those that are not UTF-8 too); returns whether there was
    /// any.
    pub fn remove(&mut self, name: &str) -> bool {
        let before = self.entries.len() + self.opaque.len();
        self.entries.retain(|(n, _)| !n.eq_ignore_ascii_case(name));
        self.opaque.retain(|(n, _)| !n.eq_ignore_ascii_case(name));
        before != self.entries.len() + self.opaque.len()
    }
}

fn lower(mut name: String) -> String {
    name.make_ascii_lowercase();
    name
}

impl<N: Into<String>, V: Into<String>> FromIterator<(N, V)> for HeaderMap {
    fn from_iter<I: IntoIterator<Item = (N, V)>>(iter: I) -> Self {
        let mut map = HeaderMap::new();
        for (n, v) in iter {
            map.append(n, v);
        }
        map
    }
}

impl fmt::Debug for HeaderMap {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // Values may carry credentials: debug output shows names only.
        f.debug_set()
            .entries(self.entries.iter().map(|(n, _)| n))
            .finish()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_are_case_insensitive_and_stored_lower_case() {
        let mut h = HeaderMap::new();
        h.append("X-Api-Key", "secret");
        assert_eq!(h.get("x-api-key"), Some("secret"));
        assert_eq!(h.iter().next(), Some(("x-api-key", "secret")));
        assert!(h.remove("X-API-KEY"));
        assert!(h.is_empty());
        assert!(!h.remove("x-api-key"));
    }

    #[test]
    fn set_replaces_all_values_and_append_keeps_order() {
        let mut h: HeaderMap = [("a", "1"), ("b", "2"), ("a", "3")].into_iter().collect();
        assert_eq!(h.get_all("a").collect::<Vec<_>>(), ["1", "3"]);
        h.set("A", "4");
        assert_eq!(h.get_all("a").collect::<Vec<_>>(), ["4"]);
        assert_eq!(h.len(), 2);
    }

    #[test]
    fn debug_output_hides_values() {
        let h: HeaderMap = [("authorization", "Bearer abc")].into_iter().collect();
        let shown = format!("{h:?}");
        assert!(shown.contains("authorization"));
        assert!(!shown.contains("abc"));
    }
}
