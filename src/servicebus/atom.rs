//! The Service Bus management (ATOM) wire format: entries, feeds and `<Error>` bodies.
//!
//! Only what scaling needs is read: the entity's name (the entry's `<title>`), what kind of
//! description it carries, and the runtime counts. Element names are matched by local name,
//! so the namespace prefixes Service Bus varies between responses (`d2p1`, `d3p1`, …) do not
//! matter; `CountDetails` children live in [`COUNTS_NS`] whatever prefix names it.

use quick_xml::NsReader;
use quick_xml::events::Event;
use quick_xml::name::ResolveResult;

use crate::signal::SignalError;

/// The Atom syndication namespace of entries and feeds.
pub(crate) const ATOM_NS: &str = "http://www.w3.org/2005/Atom";
/// The namespace of `QueueDescription`, `TopicDescription`, `SubscriptionDescription`.
#[cfg(test)]
pub(crate) const CONNECT_NS: &str =
    "http://schemas.microsoft.com/netservices/2010/10/servicebus/connect";
/// The namespace of the `CountDetails` children.
pub(crate) const COUNTS_NS: &str = "http://schemas.microsoft.com/netservices/2011/06/servicebus";
/// The title of the feed Service Bus answers with, HTTP 200, for an entity that does not exist.
pub(crate) const NOT_FOUND_FEED_TITLE: &str = "Publicly Listed Services";

/// Longest upstream error detail kept in an error message.
const MAX_DETAIL: usize = 400;

/// A feed with more entries than this is refused while it is read: the scaler asks for
/// pages of 100, so more is a server that ignores `$top`.
pub(crate) const MAX_ENTRIES: usize = 1_000;

/// What kind of entity an entry describes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum EntityKind {
    Queue,
    Topic,
    Subscription,
    /// A description this client does not know (rules, notification hubs, …).
    Other,
}

impl EntityKind {
    pub(crate) fn as_str(self) -> &'static str {
        match self {
            EntityKind::Queue => "queue",
            EntityKind::Topic => "topic",
            EntityKind::Subscription => "subscription",
            EntityKind::Other => "entity",
        }
    }
}

/// The message counts of an entity (`CountDetails`). Absent children stay `None`.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct CountDetails {
    pub(crate) active: Option<u64>,
    pub dead_letter: Option<u64>,
    pub scheduled: Option<u64>,
    pub transfer: Option<u64>,
    pub transfer_dead_letter: Option<u64>,
}

/// One entity's runtime description.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Description {
    /// The entry's `<title>`: the queue, topic or subscription name.
    pub name: String,
    pub kind: EntityKind,
    pub counts: CountDetails,
    /// `MessageCount` (queues and subscriptions; topics have none).
    pub message_count: Option<u64>,
    pub(crate) size_in_bytes: Option<u64>,
    /// `SubscriptionCount` (topics only).
    pub subscription_count: Option<u64>,
}

impl Description {
    /// `ActiveMessageCount`, the value scaling uses; its absence is a malformed response,
    /// never 0.
    pub fn active(&self) -> Result<u64, SignalError> {
        self.counts.active.ok_or_else(|| {
            SignalError::Malformed(format!(
                "the {} `{}` has no CountDetails/ActiveMessageCount",
                self.kind.as_str(),
                self.name
            ))
        })
    }
}

/// An Atom feed: a page of a list, or the not-found quirk.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Feed {
    pub title: String,
    pub(crate) entries: Vec<Description>,
}

impl Feed {
    /// Service Bus answers a GET of a missing entity with HTTP 200 and this feed.
    pub fn is_not_found_quirk(&self) -> bool {
        self.title.trim() == NOT_FOUND_FEED_TITLE
    }
}

/// `<Error><Code/><Detail/></Error>`.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ErrorBody {
    pub code: String,
    pub detail: String,
}

/// A parsed management API body.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Document {
    Entry(Description),
    Feed(Feed),
    Error(ErrorBody),
}

/// Where the parser is; each element's meaning depends only on its ancestors.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Node {
    /// An element the parser does not read.
    Skip,
    Feed,
    FeedTitle,
    Entry,
    EntryTitle,
    Content,
    Description,
    DescriptionField(Field),
    CountDetails,
    Count(CountField),
    Error,
    ErrorCode,
    ErrorDetail,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Field {
    MessageCount,
    SizeInBytes,
    SubscriptionCount,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum CountField {
    Active,
    DeadLetter,
    Scheduled,
    Transfer,
    TransferDeadLetter,
}

#[derive(Default)]
struct EntryBuilder {
    title: Option<String>,
    kind: Option<EntityKind>,
    counts: CountDetails,
    message_count: Option<u64>,
    size_in_bytes: Option<u64>,
    subscription_count: Option<u64>,
}

impl EntryBuilder {
    fn finish(self) -> Result<Description, SignalError> {
        let name = self
            .title
            .map(|t| t.trim().to_string())
            .filter(|t| !t.is_empty())
            .ok_or_else(|| SignalError::Malformed("an entry has no <title>".into()))?;
        Ok(Description {
            name,
            kind: self.kind.unwrap_or(EntityKind::Other),
            counts: self.counts,
            message_count: self.message_count,
            size_in_bytes: self.size_in_bytes,
            subscription_count: self.subscription_count,
        })
    }
}

fn malformed(what: impl Into<String>) -> SignalError {
    SignalError::Malformed(what.into())
}

fn number(text: &str, element: &str) -> Result<u64, SignalError> {
    text.trim()
        .parse::<u64>()
        // The text itself is the upstream's and stays out of the message.
        .map_err(|_| malformed(format!("<{element}> is not a count")))
}

/// Cuts `text` to at most `max` characters, on a character boundary.
pub(crate) fn clip(text: &str, max: usize) -> String {
    let text = text.trim();
    match text.char_indices().nth(max) {
        Some((i, _)) => format!("{}…", &text[..i]),
        None => text.to_string(),
    }
}

/// Which node a child element is, given its parent and its local name.
fn child(parent: Node, local: &str, ns: Option<&str>) -> Node {
    match (parent, local) {
        (Node::Feed, "title") => Node::FeedTitle,
        (Node::Feed, "entry") => Node::Entry,
        (Node::Entry, "title") => Node::EntryTitle,
        (Node::Entry, "content") => Node::Content,
        (Node::Content, l) if l.ends_with("Description") => Node::Description,
        (Node::Description, "CountDetails") => Node::CountDetails,
        (Node::Description, "MessageCount") => Node::DescriptionField(Field::MessageCount),
        (Node::Description, "SizeInBytes") => Node::DescriptionField(Field::SizeInBytes),
        (Node::Description, "SubscriptionCount") => {
            Node::DescriptionField(Field::SubscriptionCount)
        }
        // Matched by local name; a child explicitly bound to some other namespace is not a
        // count (an unbound or `COUNTS_NS` one is).
        (Node::CountDetails, l) if ns.is_none_or(|n| n == COUNTS_NS) => match l {
            "ActiveMessageCount" => Node::Count(CountField::Active),
            "DeadLetterMessageCount" => Node::Count(CountField::DeadLetter),
            "ScheduledMessageCount" => Node::Count(CountField::Scheduled),
            "TransferMessageCount" => Node::Count(CountField::Transfer),
            "TransferDeadLetterMessageCount" => Node::Count(CountField::TransferDeadLetter),
            _ => Node::Skip,
        },
        (Node::Error, "Code") => Node::ErrorCode,
        (Node::Error, "Detail") => Node::ErrorDetail,
        _ => Node::Skip,
    }
}

fn description_kind(local: &str) -> EntityKind {
    match local {
        "QueueDescription" => EntityKind::Queue,
        "TopicDescription" => EntityKind::Topic,
        "SubscriptionDescription" => EntityKind::Subscription,
        _ => EntityKind::Other,
    }
}

/// Parses a management API body. Anything that is not a well-formed entry, feed or
/// `<Error>` document (truncated, HTML, garbage) is [`SignalError::Malformed`].
pub fn parse(body: &str) -> Result<Document, SignalError> {
    let mut reader = NsReader::from_str(body);
    let mut stack: Vec<Node> = Vec::new();
    let mut names: Vec<String> = Vec::new();
    let mut text = String::new();
    let mut root: Option<Node> = None;
    let mut feed = Feed::default();
    let mut entry: Option<EntryBuilder> = None;
    let mut error = ErrorBody::default();

    loop {
        let (ns, event) = reader
            .read_resolved_event()
            .map_err(|e| malformed(format!("not well-formed XML: {e}")))?;
        let ns = match ns {
            ResolveResult::Bound(n) => Some(n.0.to_string()),
            _ => None,
        };
        match event {
            Event::Start(ref e) | Event::Empty(ref e) => {
                let empty = matches!(event, Event::Empty(_));
                let local = e.local_name().as_ref().to_string();
                let node = match stack.last() {
                    None => {
                        if root.is_some() {
                            return Err(malformed("more than one root element"));
                        }
                        let node = match local.as_str() {
                            "feed" if ns.as_deref() == Some(ATOM_NS) => Node::Feed,
                            "entry" if ns.as_deref() == Some(ATOM_NS) => Node::Entry,
                            "Error" => Node::Error,
                            _ => return Err(malformed("an unexpected root element")),
                        };
                        root = Some(node);
                        node
                    }
                    Some(&parent) => child(parent, &local, ns.as_deref()),
                };
                match node {
                    Node::Entry => entry = Some(EntryBuilder::default()),
                    Node::Description => {
                        if let Some(b) = entry.as_mut() {
                            b.kind = Some(description_kind(&local));
                        }
                    }
                    _ => {}
                }
                text.clear();
                if empty {
                    close(node, "", &mut feed, &mut entry, &mut error, &local)?;
                } else {
                    stack.push(node);
                    names.push(local);
                }
            }
            Event::End(_) => {
                let node = stack
                    .pop()
                    .ok_or_else(|| malformed("an end tag without a start tag"))?;
                let local = names.pop().unwrap_or_default();
                close(node, &text, &mut feed, &mut entry, &mut error, &local)?;
                text.clear();
            }
            Event::Text(t) => {
                if stack.is_empty() {
                    if !t.xml10_content().trim().is_empty() {
                        return Err(malformed("text outside the root element"));
                    }
                } else {
                    text.push_str(&t.xml10_content());
                }
            }
            Event::CData(c) => {
                if stack.is_empty() {
                    return Err(malformed("text outside the root element"));
                }
                text.push_str(&c);
            }
            Event::GeneralRef(r) => {
                if stack.is_empty() {
                    return Err(malformed("text outside the root element"));
                }
                match r.resolve_char_ref() {
                    Ok(Some(c)) => text.push(c),
                    Ok(None) => {
                        let name = r.xml10_content();
                        let resolved = quick_xml::escape::resolve_predefined_entity(&name)
                            .ok_or_else(|| malformed("an unknown XML entity"))?;
                        text.push_str(resolved);
                    }
                    Err(e) => return Err(malformed(format!("bad character reference: {e}"))),
                }
            }
            Event::Eof => break,
            // Declarations, comments, processing instructions, doctypes carry nothing.
            _ => {}
        }
    }
    if !names.is_empty() {
        return Err(malformed("the body ends inside an element (truncated?)"));
    }
    match root {
        None if body.trim().is_empty() => Err(malformed("the body is empty")),
        None => Err(malformed("the body is not XML")),
        Some(Node::Feed) => Ok(Document::Feed(feed)),
        Some(Node::Entry) => {
            // `close` moved a finished root entry into the feed's list.
            let d = feed
                .entries
                .pop()
                .ok_or_else(|| malformed("the entry was not closed"))?;
            Ok(Document::Entry(d))
        }
        Some(_) => Ok(Document::Error(error)),
    }
}

/// Acts on an element's end: stores its text where it belongs.
fn close(
    node: Node,
    text: &str,
    feed: &mut Feed,
    entry: &mut Option<EntryBuilder>,
    error: &mut ErrorBody,
    local: &str,
) -> Result<(), SignalError> {
    match node {
        Node::FeedTitle => feed.title = text.trim().to_string(),
        Node::EntryTitle => {
            if let Some(b) = entry.as_mut() {
                b.title = Some(text.to_string());
            }
        }
        Node::DescriptionField(field) => {
            if let Some(b) = entry.as_mut() {
                let v = Some(number(text, local)?);
                match field {
                    Field::MessageCount => b.message_count = v,
                    Field::SizeInBytes => b.size_in_bytes = v,
                    Field::SubscriptionCount => b.subscription_count = v,
                }
            }
        }
        Node::Count(field) => {
            if let Some(b) = entry.as_mut() {
                let v = Some(number(text, local)?);
                let c = &mut b.counts;
                match field {
                    CountField::Active => c.active = v,
                    CountField::DeadLetter => c.dead_letter = v,
                    CountField::Scheduled => c.scheduled = v,
                    CountField::Transfer => c.transfer = v,
                    CountField::TransferDeadLetter => c.transfer_dead_letter = v,
                }
            }
        }
        Node::Entry => {
            if let Some(b) = entry.take() {
                if feed.entries.len() == MAX_ENTRIES {
                    return Err(SignalError::OverLimit(format!(
                        "the list has more than {MAX_ENTRIES} entries on one page"
                    )));
                }
                feed.entries.push(b.finish()?);
            }
        }
        Node::ErrorCode => error.code = text.trim().to_string(),
        Node::ErrorDetail => error.detail = text.trim().to_string(),
        _ => {}
    }
    Ok(())
}

/// Reads the response to a GET of one entity (`what` names it in errors, e.g.
/// "queue `orders` in namespace `x`"). The HTTP 200 empty feed is [`SignalError::NotFound`].
pub fn entity_from(body: &str, what: &str) -> Result<Description, SignalError> {
    match parse(body)? {
        Document::Entry(d) => Ok(d),
        Document::Feed(f) if f.is_not_found_quirk() || f.entries.is_empty() => {
            Err(SignalError::NotFound(what.to_string()))
        }
        Document::Feed(_) => Err(malformed(format!(
            "a list came back where one entity was asked for ({what})"
        ))),
        Document::Error(e) => Err(error_document(None, &e, what)),
    }
}

/// Reads one page of a list (`$Resources/Queues`, `{topic}/Subscriptions`). The not-found
/// feed means the listed container (the topic) does not exist.
pub fn page_from(body: &str, what: &str) -> Result<Vec<Description>, SignalError> {
    match parse(body)? {
        Document::Feed(f) if f.is_not_found_quirk() => Err(SignalError::NotFound(what.to_string())),
        Document::Feed(f) => Ok(f.entries),
        Document::Entry(_) => Err(malformed(format!(
            "one entity came back where a list was asked for ({what})"
        ))),
        Document::Error(e) => Err(error_document(None, &e, what)),
    }
}

/// The error for a non-2xx status with its body (usually an `<Error>` document).
/// 401/403 are [`SignalError::Unauthorized`], 429/503 [`SignalError::Throttled`] (the caller
/// adds `Retry-After`), 404 [`SignalError::NotFound`].
pub fn error_from(status: u16, body: &str, what: &str) -> SignalError {
    let parsed = match parse(body) {
        Ok(Document::Error(e)) => e,
        // Not an <Error> document (a proxy's HTML page, an empty body): the log has a hint.
        _ => ErrorBody {
            code: status.to_string(),
            detail: if body.trim().is_empty() {
                String::new()
            } else {
                format!("unexpected body: {}", clip(body, 120))
            },
        },
    };
    error_document(Some(status), &parsed, what)
}

/// The error for an `<Error>` answer. Its `<Detail>` is the upstream's text: it goes to the
/// scaler's log, never into the error a caller sees (docs/security.md, "Where requests may go").
fn error_document(status: Option<u16>, e: &ErrorBody, what: &str) -> SignalError {
    let status = status
        .or_else(|| e.code.trim().parse::<u16>().ok())
        .unwrap_or(0);
    let detail = clip(&e.detail, MAX_DETAIL);
    if !detail.is_empty() {
        tracing::warn!(
            upstream = "servicebus",
            status,
            entity = %what,
            detail = %detail,
            "Service Bus answered an error"
        );
    }
    match status {
        401 | 403 => SignalError::Unauthorized {
            status,
            detail: format!("the credential was refused for {what}"),
        },
        404 => SignalError::NotFound(what.to_string()),
        429 | 503 => SignalError::Throttled {
            status,
            retry_after: None,
        },
        _ => SignalError::Http {
            status,
            detail: format!("Service Bus failed to answer for {what}"),
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entry(prefix: &str, active: &str) -> String {
        format!(
            r#"<entry xmlns="{ATOM_NS}"><title type="text">orders</title><content type="application/xml"><QueueDescription xmlns="{CONNECT_NS}"><MessageCount>9</MessageCount><CountDetails xmlns:{prefix}="{COUNTS_NS}"><{prefix}:ActiveMessageCount>{active}</{prefix}:ActiveMessageCount></CountDetails></QueueDescription></content></entry>"#
        )
    }

    #[test]
    fn counts_are_read_whatever_the_prefix() {
        for prefix in ["d2p1", "d3p1", "x"] {
            let d = entity_from(&entry(prefix, "7"), "queue").unwrap();
            assert_eq!(d.active().unwrap(), 7, "{prefix}");
            assert_eq!(d.kind, EntityKind::Queue);
            assert_eq!(d.message_count, Some(9));
        }
    }

    #[test]
    fn a_count_in_a_foreign_namespace_is_not_read() {
        let body = entry("d2p1", "7").replace(COUNTS_NS, "urn:other");
        let d = entity_from(&body, "queue").unwrap();
        assert!(matches!(d.active(), Err(SignalError::Malformed(_))));
    }

    #[test]
    fn a_negative_or_textual_count_is_malformed_not_zero() {
        for bad in ["-1", "many", ""] {
            assert!(
                matches!(
                    entity_from(&entry("d2p1", bad), "queue"),
                    Err(SignalError::Malformed(_))
                ),
                "{bad:?}"
            );
        }
    }

    #[test]
    fn truncated_garbage_and_empty_bodies_are_malformed() {
        let full = entry("d2p1", "3");
        for cut in [10, full.len() / 2, full.len() - 3] {
            let r = entity_from(&full[..cut], "queue");
            assert!(matches!(r, Err(SignalError::Malformed(_))), "{cut}: {r:?}");
        }
        for garbage in [
            "",
            "   ",
            "hello",
            "<html><body>Bad gateway</body></html>",
            "\u{0}\u{1}<<<",
            "<entry><title>x</title></entry><entry/>",
        ] {
            let r = entity_from(garbage, "queue");
            assert!(
                matches!(r, Err(SignalError::Malformed(_))),
                "{garbage:?}: {r:?}"
            );
        }
    }

    #[test]
    fn escaped_names_are_unescaped() {
        let body = entry("d2p1", "1").replace(">orders<", ">a&amp;b&#x41;<");
        assert_eq!(entity_from(&body, "queue").unwrap().name, "a&bA");
    }

    #[test]
    fn error_bodies_map_to_their_kind() {
        let body = "<Error><Code>401</Code><Detail>claim is empty</Detail></Error>";
        let e = error_from(401, body, "queue `q`");
        assert!(e.to_string().contains("authorization failed"), "{e}");
        // The upstream's own words stay in the log.
        assert!(!e.to_string().contains("claim is empty"), "{e}");
        assert!(matches!(
            error_from(403, "", "q"),
            SignalError::Unauthorized { status: 403, .. }
        ));
        assert!(matches!(
            error_from(503, "<Error><Code>503</Code><Detail/></Error>", "q"),
            SignalError::Throttled { status: 503, .. }
        ));
        assert!(matches!(
            error_from(502, "<html>bad gateway</html>", "q"),
            SignalError::Http { status: 502, .. }
        ));
        let long = format!(
            "<Error><Code>500</Code><Detail>{}</Detail></Error>",
            "x".repeat(5000)
        );
        assert!(error_from(500, &long, "q").to_string().len() < 600);
    }
}
