//! Label selectors, the grammar of apimachinery's `labels.Parse` (what the HPA sends as
//! `labelSelector`, built by `labels.Selector.String()`).
//!
//! Hand-written: no maintained crate parses the Kubernetes selector grammar.

use std::collections::BTreeMap;
use std::fmt;

#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) enum Operator {
    /// `=`
    Equals,
    /// `==`
    DoubleEquals,
    /// `!=`
    NotEquals,
    In,
    NotIn,
    /// A bare `key`.
    Exists,
    /// `!key`
    DoesNotExist,
    /// `>`, integer values only.
    GreaterThan,
    /// `<`, integer values only.
    LessThan,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Requirement {
    pub(crate) key: String,
    pub(crate) operator: Operator,
    /// Sorted and unique, as Go keeps them.
    pub(crate) values: Vec<String>,
}

/// A parsed selector: every requirement must hold. Empty selects everything.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Selector(pub Vec<Requirement>);

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
#[error("invalid labelSelector: {0}")]
pub struct SelectorError(pub String);

impl Requirement {
    fn matches(&self, labels: &BTreeMap<String, String>) -> bool {
        let value = labels.get(&self.key);
        match self.operator {
            Operator::Equals | Operator::DoubleEquals | Operator::In => {
                value.is_some_and(|v| self.values.contains(v))
            }
            Operator::NotEquals | Operator::NotIn => {
                !value.is_some_and(|v| self.values.contains(v))
            }
            Operator::Exists => value.is_some(),
            Operator::DoesNotExist => value.is_none(),
            Operator::GreaterThan | Operator::LessThan => {
                let (Some(Ok(have)), Ok(want)) = (
                    value.map(|v| v.parse::<i64>()),
                    self.values[0].parse::<i64>(),
                ) else {
                    return false;
                };
                if self.operator == Operator::GreaterThan {
                    have > want
                } else {
                    have < want
                }
            }
        }
    }
}

impl Selector {
    pub(crate) fn matches(&self, labels: &BTreeMap<String, String>) -> bool {
        self.0.iter().all(|r| r.matches(labels))
    }

    /// The single value `key` is pinned to (`key=v`, `key==v` or `key in (v)`), if any.
    pub(crate) fn pinned(&self, key: &str) -> Option<&str> {
        self.0.iter().find_map(|r| match r.operator {
            Operator::Equals | Operator::DoubleEquals | Operator::In
                if r.key == key && r.values.len() == 1 =>
            {
                Some(r.values[0].as_str())
            }
            _ => None,
        })
    }
}

impl fmt::Display for Requirement {
    /// As Go's `Requirement.String()`.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let k = &self.key;
        match self.operator {
            Operator::Equals => write!(f, "{k}={}", self.values[0]),
            Operator::DoubleEquals => write!(f, "{k}=={}", self.values[0]),
            Operator::NotEquals => write!(f, "{k}!={}", self.values[0]),
            Operator::In => write!(f, "{k} in ({})", self.values.join(",")),
            Operator::NotIn => write!(f, "{k} notin ({})", self.values.join(",")),
            Operator::Exists => write!(f, "{k}"),
            Operator::DoesNotExist => write!(f, "!{k}"),
            Operator::GreaterThan => write!(f, "{k}>{}", self.values[0]),
            Operator::LessThan => write!(f, "{k}<{}", self.values[0]),
        }
    }
}

impl fmt::Display for Selector {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let parts: Vec<String> = self.0.iter().map(ToString::to_string).collect();
        f.write_str(&parts.join(","))
    }
}

#[derive(Clone, Debug, PartialEq, Eq)]
enum Token {
    Ident(String),
    Not,
    Eq,
    DoubleEq,
    NotEq,
    Gt,
    Lt,
    Comma,
    Open,
    Close,
}

fn lex(input: &str) -> Result<Vec<Token>, SelectorError> {
    let mut out = Vec::new();
    let mut chars = input.chars().peekable();
    while let Some(&c) = chars.peek() {
        match c {
            c if c.is_whitespace() => {
                chars.next();
            }
            '!' | '=' => {
                chars.next();
                let double = chars.peek() == Some(&'=');
                if double {
                    chars.next();
                }
                out.push(match (c, double) {
                    ('!', true) => Token::NotEq,
                    ('!', false) => Token::Not,
                    ('=', true) => Token::DoubleEq,
                    _ => Token::Eq,
                });
            }
            '>' | '<' | ',' | '(' | ')' => {
                chars.next();
                out.push(match c {
                    '>' => Token::Gt,
                    '<' => Token::Lt,
                    ',' => Token::Comma,
                    '(' => Token::Open,
                    _ => Token::Close,
                });
            }
            _ => {
                let mut word = String::new();
                while let Some(&c) = chars.peek() {
                    if c.is_whitespace() || "!=><,()".contains(c) {
                        break;
                    }
                    word.push(c);
                    chars.next();
                }
                out.push(Token::Ident(word));
            }
        }
    }
    Ok(out)
}

/// Parses a selector; requirements come back sorted by key, as Go sorts them.
pub fn parse(input: &str) -> Result<Selector, SelectorError> {
    let tokens = lex(input)?;
    let mut p = Parser { tokens, at: 0 };
    let mut reqs = Vec::new();
    if p.tokens.is_empty() {
        return Ok(Selector(reqs));
    }
    loop {
        reqs.push(p.requirement()?);
        match p.next() {
            None => break,
            Some(Token::Comma) => continue,
            Some(t) => return Err(p.unexpected(Some(t), "','")),
        }
    }
    reqs.sort_by(|a, b| a.key.cmp(&b.key));
    Ok(Selector(reqs))
}

struct Parser {
    tokens: Vec<Token>,
    at: usize,
}

impl Parser {
    fn next(&mut self) -> Option<Token> {
        let t = self.tokens.get(self.at).cloned();
        self.at += 1;
        t
    }

    fn peek(&self) -> Option<&Token> {
        self.tokens.get(self.at)
    }

    fn unexpected(&self, t: Option<Token>, wanted: &str) -> SelectorError {
        match t {
            Some(t) => SelectorError(format!("found {t:?}, expected {wanted}")),
            None => SelectorError(format!("unexpected end, expected {wanted}")),
        }
    }

    fn requirement(&mut self) -> Result<Requirement, SelectorError> {
        let negated = self.peek() == Some(&Token::Not);
        if negated {
            self.next();
        }
        let key = match self.next() {
            Some(Token::Ident(k)) => k,
            t => return Err(self.unexpected(t, "a label key")),
        };
        validate_key(&key)?;
        if negated {
            return match self.peek() {
                None | Some(Token::Comma) => Ok(Requirement {
                    key,
                    operator: Operator::DoesNotExist,
                    values: vec![],
                }),
                _ => Err(SelectorError(format!("`!{key}` takes no operator"))),
            };
        }
        let operator = match self.peek() {
            None | Some(Token::Comma) => {
                return Ok(Requirement {
                    key,
                    operator: Operator::Exists,
                    values: vec![],
                });
            }
            Some(Token::Eq) => Operator::Equals,
            Some(Token::DoubleEq) => Operator::DoubleEquals,
            Some(Token::NotEq) => Operator::NotEquals,
            Some(Token::Gt) => Operator::GreaterThan,
            Some(Token::Lt) => Operator::LessThan,
            Some(Token::Ident(w)) if w == "in" => Operator::In,
            Some(Token::Ident(w)) if w == "notin" => Operator::NotIn,
            _ => {
                let t = self.next();
                return Err(self.unexpected(t, "an operator"));
            }
        };
        self.next();
        let values = match operator {
            Operator::In | Operator::NotIn => self.set()?,
            _ => {
                // `k=` is an empty value, as in Go.
                let v = match self.peek() {
                    Some(Token::Ident(v)) => {
                        let v = v.clone();
                        self.next();
                        v
                    }
                    None | Some(Token::Comma) => String::new(),
                    _ => {
                        let t = self.next();
                        return Err(self.unexpected(t, "a label value"));
                    }
                };
                vec![v]
            }
        };
        for v in &values {
            validate_value(v)?;
        }
        if matches!(operator, Operator::GreaterThan | Operator::LessThan)
            && values[0].parse::<i64>().is_err()
        {
            return Err(SelectorError(format!(
                "for `>` and `<`, the value must be an integer, not `{}`",
                values[0]
            )));
        }
        Ok(Requirement {
            key,
            operator,
            values,
        })
    }

    fn set(&mut self) -> Result<Vec<String>, SelectorError> {
        match self.next() {
            Some(Token::Open) => {}
            t => return Err(self.unexpected(t, "'('")),
        }
        let mut values = Vec::new();
        loop {
            match self.next() {
                Some(Token::Ident(v)) => values.push(v),
                Some(Token::Close) if values.is_empty() => {
                    return Err(SelectorError(
                        "for `in` and `notin`, the set of values cannot be empty".into(),
                    ));
                }
                t => return Err(self.unexpected(t, "a label value")),
            }
            match self.next() {
                Some(Token::Comma) => continue,
                Some(Token::Close) => break,
                t => return Err(self.unexpected(t, "',' or ')'")),
            }
        }
        values.sort();
        values.dedup();
        Ok(values)
    }
}

fn is_name_part(s: &str, max: usize) -> bool {
    let b = s.as_bytes();
    !s.is_empty()
        && s.len() <= max
        && b[0].is_ascii_alphanumeric()
        && b[b.len() - 1].is_ascii_alphanumeric()
        && b.iter()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, b'-' | b'_' | b'.'))
}

fn is_dns_subdomain(s: &str) -> bool {
    s.len() <= 253
        && s.split('.').all(|label| {
            let b = label.as_bytes();
            !b.is_empty()
                && label.len() <= 63
                && b[0].is_ascii_alphanumeric()
                && b[b.len() - 1].is_ascii_alphanumeric()
                && b.iter()
                    .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || *c == b'-')
        })
}

/// A qualified name: `[prefix/]name`, as `validation.IsQualifiedName`.
fn validate_key(key: &str) -> Result<(), SelectorError> {
    let ok = match key.split_once('/') {
        Some((prefix, name)) => is_dns_subdomain(prefix) && is_name_part(name, 63),
        None => is_name_part(key, 63),
    };
    if ok {
        Ok(())
    } else {
        Err(SelectorError(format!("`{key}` is not a valid label key")))
    }
}

/// A label value: empty, or up to 63 characters of `[A-Za-z0-9_.-]` starting and ending
/// alphanumeric.
fn validate_value(value: &str) -> Result<(), SelectorError> {
    if value.is_empty() || is_name_part(value, 63) {
        Ok(())
    } else {
        Err(SelectorError(format!(
            "`{value}` is not a valid label value"
        )))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn labels(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    /// Strings as Go's `labels.Selector.String()` writes them (requirements sorted by key,
    /// set values sorted, `metav1.LabelSelectorAsSelector` turning matchLabels into `=`).
    #[test]
    fn strings_go_writes_parse_and_print_back_unchanged() {
        for go in [
            "blend-scaler.io/name=order-processor",
            "app!=web,blend-scaler.io/name=order-processor",
            "blend-scaler.io/name in (a,b),env notin (dev)",
            "blend-scaler.io/name,!legacy",
            "blend-scaler.io/name==x",
            "generation>3,weight<10",
            "empty=",
        ] {
            let parsed = parse(go).unwrap_or_else(|e| panic!("{go}: {e}"));
            assert_eq!(parsed.to_string(), go);
        }
    }

    #[test]
    fn whitespace_order_and_duplicates_are_normalised_as_go_does() {
        let s = parse(" z = 1 ,  a in ( c , b , b ) ").unwrap();
        assert_eq!(s.to_string(), "a in (b,c),z=1");
    }

    #[test]
    fn the_reference_is_found_in_each_form_that_pins_one_name() {
        for text in [
            "blend-scaler.io/name=orders",
            "blend-scaler.io/name==orders",
            "blend-scaler.io/name in (orders)",
            "x=y,blend-scaler.io/name=orders",
        ] {
            assert_eq!(
                parse(text).unwrap().pinned("blend-scaler.io/name"),
                Some("orders")
            );
        }
        for text in [
            "blend-scaler.io/name in (a,b)",
            "blend-scaler.io/name!=a",
            "blend-scaler.io/name",
            "",
        ] {
            assert_eq!(
                parse(text).unwrap().pinned("blend-scaler.io/name"),
                None,
                "{text}"
            );
        }
    }

    #[test]
    fn matching_follows_each_operator() {
        let l = labels(&[("blend-scaler.io/name", "orders"), ("n", "5")]);
        for (text, want) in [
            ("blend-scaler.io/name=orders", true),
            ("blend-scaler.io/name=other", false),
            ("blend-scaler.io/name!=other", true),
            ("missing!=x", true),
            ("blend-scaler.io/name notin (orders)", false),
            ("n>4", true),
            ("n<5", false),
            ("n", true),
            ("!n", false),
            ("!missing", true),
            ("", true),
        ] {
            assert_eq!(parse(text).unwrap().matches(&l), want, "{text}");
        }
    }

    #[test]
    fn malformed_selectors_are_refused_with_a_reason() {
        for bad in [
            "=x",
            "a in ()",
            "a in (b",
            "a notin b",
            "a=b=c",
            "a>x",
            "!a=b",
            "a,",
            "Bad_Prefix.io/x=1",
            "a=-bad",
            &format!("a={}", "v".repeat(64)),
            "a b",
        ] {
            assert!(parse(bad).is_err(), "{bad} parsed");
        }
    }
}
