//! Host lists the operator writes: `--allow-upstream` (where trigger metadata may point) and
//! `--allow-private-upstream` (which hosts may be reached on a non-public address). See
//! docs/security.md, "Where requests may go".
//!
//! An entry is `host[:port]`. The host is compared label by label: `*` matches any run of
//! characters inside one label and never crosses a dot, so `*.servicebus.windows.net` matches
//! `orders.servicebus.windows.net` but neither `a.b.servicebus.windows.net` nor
//! `orders.servicebus.windows.net.evil.io`, and `prometheus*` matches `prometheus-0` but not
//! `prometheus.attacker.com`. An entry without a port matches only the scheme's default port
//! (443 for https, 80 for http), so an allowed host does not open every port on it. Matching is
//! case-insensitive; a trailing dot is part of the name (it changes how DNS resolves it).
//!
//! Hand-written: glob crates treat the pattern as a path or a whole string, and none has
//! DNS-label semantics with ports.

use std::fmt;

/// One entry.
#[derive(Clone, Debug, PartialEq, Eq)]
struct Entry {
    labels: Vec<String>,
    port: Option<u16>,
}

impl Entry {
    fn parse(text: &str) -> Result<Self, String> {
        let text = text.trim().to_ascii_lowercase();
        let bad = |why: &str| Err(format!("`{text}` is not `host[:port]`: {why}"));
        if text.contains("://") || text.contains('/') || text.contains('@') {
            return bad("give the host (and port) only, no scheme, path or user");
        }
        let (host, port) = if let Some(rest) = text.strip_prefix('[') {
            let Some((ip, after)) = rest.split_once(']') else {
                return bad("an IPv6 address needs its closing `]`");
            };
            if ip.parse::<std::net::Ipv6Addr>().is_err() {
                return bad("not an IPv6 address in brackets");
            }
            (format!("[{ip}]"), after.strip_prefix(':'))
        } else {
            match text.rsplit_once(':') {
                Some((h, p)) => (h.to_string(), Some(p)),
                None => (text.clone(), None),
            }
        };
        let port = match port {
            None => None,
            Some(p) => match p.parse::<u16>() {
                Ok(p) if p > 0 => Some(p),
                _ => return bad("the port is not a number from 1 to 65535"),
            },
        };
        if host.is_empty() {
            return bad("the host is empty");
        }
        let labels: Vec<String> = if host.starts_with('[') {
            vec![host]
        } else {
            host.split('.').map(str::to_string).collect()
        };
        let last = labels.len() - 1;
        for (i, label) in labels.iter().enumerate() {
            // A trailing dot (an absolute name) leaves one empty last label; nothing else may.
            let trailing = i == last && i > 0 && label.is_empty();
            let ok = label.starts_with('[')
                || trailing
                || (!label.is_empty()
                    && label
                        .bytes()
                        .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'*')));
            if !ok {
                return bad("a host is dot-separated labels of letters, digits, `-`, `_`, `*`");
            }
        }
        Ok(Self { labels, port })
    }

    fn matches(&self, host: &str, port: u16, default_port: u16) -> bool {
        if self.port.unwrap_or(default_port) != port {
            return false;
        }
        self.host_matches(host)
    }

    fn host_matches(&self, host: &str) -> bool {
        let host = host.to_ascii_lowercase();
        let labels: Vec<&str> = if host.starts_with('[') {
            vec![host.as_str()]
        } else {
            host.split('.').collect()
        };
        labels.len() == self.labels.len()
            && self
                .labels
                .iter()
                .zip(&labels)
                .all(|(pattern, label)| label_matches(pattern, label))
    }

    fn is_exact(&self) -> bool {
        !self.labels.iter().any(|l| l.contains('*'))
    }
}

/// `*` matches any run of characters (none included) within one label.
fn label_matches(pattern: &str, label: &str) -> bool {
    let Some((first, rest)) = pattern.split_once('*') else {
        return pattern == label;
    };
    let Some(mut remaining) = label.strip_prefix(first) else {
        return false;
    };
    let mut pieces: Vec<&str> = rest.split('*').collect();
    let last = pieces.pop().unwrap_or("");
    for piece in pieces {
        match remaining.find(piece) {
            Some(at) => remaining = &remaining[at + piece.len()..],
            None => return false,
        }
    }
    remaining.len() >= last.len() && remaining.ends_with(last)
}

/// A parsed list of entries.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct HostList {
    entries: Vec<Entry>,
}

impl HostList {
    /// Parses every entry; the error names the first bad one.
    pub(crate) fn parse<S: AsRef<str>>(entries: &[S]) -> Result<Self, String> {
        let entries = entries
            .iter()
            .map(|e| e.as_ref())
            .filter(|e| !e.trim().is_empty())
            .map(Entry::parse)
            .collect::<Result<_, _>>()?;
        Ok(Self { entries })
    }

    /// Hosts only, no ports: for lists that a DNS resolver applies, which sees no port.
    pub fn parse_hosts<S: AsRef<str>>(entries: &[S]) -> Result<Self, String> {
        let list = Self::parse(entries)?;
        if let Some(e) = list.entries.iter().find(|e| e.port.is_some()) {
            return Err(format!(
                "`{}:{}`: give host names only here (ports belong in --allow-upstream)",
                e.labels.join("."),
                e.port.unwrap_or_default()
            ));
        }
        Ok(list)
    }

    /// True when `url`'s host and port (the scheme's default when it has none) match an entry.
    pub(crate) fn allows(&self, url: &url::Url) -> bool {
        let (Some(host), Some(port)) = (url.host_str(), url.port_or_known_default()) else {
            return false;
        };
        let default_port = match url.scheme() {
            "https" => 443,
            "http" => 80,
            _ => return false,
        };
        self.entries
            .iter()
            .any(|e| e.matches(host, port, default_port))
    }

    /// True when `host` matches an entry, whatever the port.
    pub(crate) fn allows_host(&self, host: &str) -> bool {
        self.entries.iter().any(|e| e.host_matches(host))
    }

    /// True when `host` is named by an entry without a wildcard.
    pub(crate) fn names_exactly(&self, host: &str) -> bool {
        self.entries
            .iter()
            .any(|e| e.is_exact() && e.host_matches(host))
    }
}

impl fmt::Display for HostList {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let shown: Vec<String> = self
            .entries
            .iter()
            .map(|e| match e.port {
                Some(p) => format!("{}:{p}", e.labels.join(".")),
                None => e.labels.join("."),
            })
            .collect();
        f.write_str(&shown.join(","))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn allows(list: &[&str], url: &str) -> bool {
        HostList::parse(list)
            .unwrap()
            .allows(&url::Url::parse(url).unwrap())
    }

    #[test]
    fn a_wildcard_is_one_label_and_the_suffix_is_dot_bounded() {
        let sb = ["*.servicebus.windows.net"];
        assert!(allows(&sb, "https://orders.servicebus.windows.net"));
        assert!(allows(&sb, "https://ORDERS.servicebus.windows.net/"));
        assert!(!allows(&sb, "https://x.servicebus.windows.net.evil.io"));
        assert!(!allows(&sb, "https://a.b.servicebus.windows.net"));
        assert!(!allows(&sb, "https://servicebus.windows.net"));
        assert!(!allows(&sb, "https://xservicebus.windows.net"));
        let prom = ["prometheus*"];
        assert!(allows(&prom, "http://prometheus-0"));
        assert!(!allows(&prom, "http://prometheus.attacker.com"));
        assert!(label_matches("a*b*c", "axxbyyc"));
        assert!(!label_matches("a*b*c", "axxbyy"));
        assert!(label_matches("*", ""));
    }

    #[test]
    fn an_entry_without_a_port_allows_only_the_schemes_default() {
        let list = ["prometheus-server.monitoring", "mimir.monitoring:8080"];
        assert!(allows(&list, "http://prometheus-server.monitoring"));
        assert!(allows(&list, "https://prometheus-server.monitoring"));
        assert!(!allows(&list, "http://prometheus-server.monitoring:9090"));
        assert!(allows(&list, "http://mimir.monitoring:8080/prometheus"));
        assert!(!allows(&list, "http://mimir.monitoring"));
        assert!(!allows(&list, "http://mimir.monitoring:18003"));
    }

    #[test]
    fn ip_literals_and_spellings_match_only_as_written() {
        let list = ["localhost:9090", "127.0.0.1:9090", "[::1]:9090"];
        assert!(allows(&list, "http://localhost:9090"));
        assert!(allows(&list, "http://127.0.0.1:9090"));
        assert!(allows(&list, "http://[::1]:9090"));
        assert!(!allows(&list, "http://localhost.:9090"));
        assert!(!allows(&list, "http://localhost:18003"));
        // `url` normalises these to 127.0.0.1 first, so they are the same host as written.
        assert!(allows(&list, "http://0x7f.1:9090"));
        assert!(allows(&list, "http://2130706433:9090"));
        assert!(!allows(&list, "http://127.0.0.2:9090"));
    }

    #[test]
    fn bad_entries_are_refused_naming_them() {
        for bad in [
            "https://x.example",
            "x.example/path",
            "user@x.example",
            "x.example:0",
            "x.example:99999",
            "x..example",
            "[::1",
            "a b",
        ] {
            let e = HostList::parse(&[bad]).unwrap_err();
            assert!(e.contains(bad.trim()), "{bad}: {e}");
        }
        assert!(HostList::parse_hosts(&["prometheus-server.monitoring:9090"]).is_err());
        assert!(HostList::parse_hosts(&["prometheus-server.monitoring"]).is_ok());
    }

    #[test]
    fn an_exact_name_is_told_from_a_wildcard() {
        let list = HostList::parse(&["kubernetes.default.svc", "*.monitoring"]).unwrap();
        assert!(list.names_exactly("kubernetes.default.svc"));
        assert!(!list.names_exactly("prometheus.monitoring"));
        assert!(list.allows_host("prometheus.monitoring"));
    }
}
