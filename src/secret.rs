//! A string that must never be printed.

use std::fmt;
use std::sync::Arc;

/// Holds a credential. `Debug` and `Display` print `<redacted>`, so a secret can sit inside any
/// struct that is logged or shown by `check` without leaking; only [`Secret::expose`] reads it.
/// Clones share the value: every cache key made from a plan clones its credentials.
#[derive(Clone, PartialEq, Eq, Hash)]
pub struct Secret(Arc<str>);

impl Secret {
    pub fn new(value: impl AsRef<str>) -> Self {
        Self(Arc::from(value.as_ref()))
    }

    /// A secret that many plans repeat (a connection string's key): one copy for them all
    /// ([`crate::intern`]). Tokens made per request use [`Secret::new`].
    pub fn shared(value: &str) -> Self {
        Self(crate::intern::intern(value))
    }

    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("<redacted>")
    }
}

impl fmt::Display for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("<redacted>")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn debug_and_display_never_show_the_value() {
        let s = Secret::new("hunter2");
        assert_eq!(format!("{s:?} {s}"), "<redacted> <redacted>");
        assert_eq!(s.expose(), "hunter2");
    }
}

/// `text` (a URL, or what was meant to be one) with any user-info replaced by `<redacted>`:
/// `http://admin:pw@prom:9090` shows as `http://<redacted>@prom:9090`. Works on text that does
/// not parse as a URL too, since error messages quote exactly such text (docs/security.md, "Low findings").
pub(crate) fn without_userinfo(text: &str) -> String {
    let (scheme, rest) = match text.find("://") {
        Some(i) => (&text[..i + 3], &text[i + 3..]),
        None => ("", text),
    };
    // The authority ends at the first `/`, `?` or `#`; user-info is up to its last `@`.
    let end = rest.find(['/', '?', '#']).unwrap_or(rest.len());
    match rest[..end].rfind('@') {
        Some(at) => format!("{scheme}<redacted>{}", &rest[at..]),
        None => text.to_string(),
    }
}

#[cfg(test)]
mod userinfo_tests {
    use super::without_userinfo;

    #[test]
    fn user_info_is_cut_from_urls_and_from_text_that_is_not_one() {
        assert_eq!(
            without_userinfo("http://admin:USERINFO-PW@prom:9090/x"),
            "http://<redacted>@prom:9090/x"
        );
        assert_eq!(
            without_userinfo("http://a:b@c@prom"),
            "http://<redacted>@prom"
        );
        assert_eq!(without_userinfo("http://admin:pw@"), "http://<redacted>@");
        assert_eq!(
            without_userinfo("ftp://u:p@h/a@b"),
            "ftp://<redacted>@h/a@b"
        );
        assert_eq!(without_userinfo("https://prom:9090"), "https://prom:9090");
        assert_eq!(without_userinfo("user:pw@host"), "<redacted>@host");
    }
}
