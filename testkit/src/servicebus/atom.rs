//! The Atom the double writes: feeds and entries in the 2017-04 and 2021-05 shapes, with the
//! namespaces and prefixes the service uses.

use quick_xml::escape::escape;
use rand::RngExt;

use super::state::{Entity, Shared, Topic};
use super::{ApiVersion, Counts, CountsPrefix};

// The wire names, written here from the recorded responses (docs/servicebus.md) rather than
// imported from the scaler, so a mistake in the scaler's copy shows up as a failing test
// instead of agreeing with itself.
pub(super) const ATOM_NS: &str = "http://www.w3.org/2005/Atom";
pub(super) const CONNECT_NS: &str =
    "http://schemas.microsoft.com/netservices/2010/10/servicebus/connect";
pub(super) const COUNTS_NS: &str = "http://schemas.microsoft.com/netservices/2011/06/servicebus";
pub(super) const NOT_FOUND_FEED_TITLE: &str = "Publicly Listed Services";

pub(super) const XSI_NS: &str = "http://www.w3.org/2001/XMLSchema-instance";
pub(super) const ENTRY_TYPE: &str = "application/atom+xml; type=entry; charset=utf-8";
pub(super) const FEED_TYPE: &str = "application/atom+xml; type=feed; charset=utf-8";
pub(super) const ERROR_TYPE: &str = "application/xml; charset=utf-8";
pub(super) const FOREVER: &str = "P10675199DT2H48M5.4775807S";
/// Bytes per message in `SizeInBytes` (the recorded queue held 3 messages in 444 bytes).
pub(super) const BYTES_PER_MESSAGE: u64 = 148;

pub(super) fn now_text() -> String {
    chrono::Utc::now().format("%Y-%m-%dT%H:%M:%SZ").to_string()
}

pub(super) fn uuid() -> String {
    let v: u128 = rand::rng().random();
    let h = format!("{v:032x}");
    format!(
        "{}-{}-{}-{}-{}",
        &h[..8],
        &h[8..12],
        &h[12..16],
        &h[16..20],
        &h[20..]
    )
}

pub(super) struct Ctx<'a> {
    pub(super) shared: &'a Shared,
    pub(super) host: &'a str,
    pub(super) version: ApiVersion,
    /// The api-version echoed in ids and links.
    pub(super) api: String,
    pub(super) prefix: CountsPrefix,
}

impl Ctx<'_> {
    pub(super) fn feed(&self, title: &str, self_url: &str, entries: &[String]) -> String {
        let url = escape(self_url);
        format!(
            r#"<feed xmlns="{ATOM_NS}"><title type="text">{title}</title><id>{url}</id><updated>{}</updated><link rel="self" href="{url}"/>{}</feed>"#,
            now_text(),
            entries.concat()
        )
    }

    fn counts(&self, c: &Counts, subscription_get: bool) -> String {
        let p = match self.prefix {
            CountsPrefix::D2p1 => "d2p1",
            CountsPrefix::D3p1 => "d3p1",
            CountsPrefix::AsService if subscription_get => "d3p1",
            CountsPrefix::AsService => "d2p1",
        };
        format!(
            "<CountDetails xmlns:{p}=\"{COUNTS_NS}\">\
             <{p}:ActiveMessageCount>{}</{p}:ActiveMessageCount>\
             <{p}:DeadLetterMessageCount>{}</{p}:DeadLetterMessageCount>\
             <{p}:ScheduledMessageCount>{}</{p}:ScheduledMessageCount>\
             <{p}:TransferMessageCount>{}</{p}:TransferMessageCount>\
             <{p}:TransferDeadLetterMessageCount>{}</{p}:TransferDeadLetterMessageCount>\
             </CountDetails>",
            c.active, c.dead_letter, c.scheduled, c.transfer, c.transfer_dead_letter
        )
    }

    /// `<entry>` around a description. In a feed the entry inherits the Atom namespace,
    /// carries `xml:base` and links relative to it.
    #[allow(clippy::too_many_arguments)]
    fn entry(
        &self,
        id: &str,
        name: &str,
        author: bool,
        in_feed: Option<(&str, String)>,
        description: String,
    ) -> String {
        let now = now_text();
        let (open, link) = match &in_feed {
            Some((base, relative)) => (
                format!(r#"<entry xml:base="{}">"#, escape(*base)),
                escape(relative.as_str()).into_owned(),
            ),
            None => (
                format!(r#"<entry xmlns="{ATOM_NS}">"#),
                escape(id).into_owned(),
            ),
        };
        let author = if author {
            format!(
                "<author><name>{}</name></author>",
                escape(&self.shared.options.namespace)
            )
        } else {
            String::new()
        };
        format!(
            r#"{open}<id>{}</id><title type="text">{}</title><published>{now}</published><updated>{now}</updated>{author}<link rel="self" href="{link}"/><content type="application/xml">{description}</content></entry>"#,
            escape(id),
            escape(name),
        )
    }

    pub(super) fn queue_entry(&self, q: &Entity, feed_url: Option<&str>) -> String {
        let api = &self.api;
        let name = &q.name;
        let id = format!("https://{}/{name}?api-version={api}", self.host);
        let c = &q.counts;
        let now = now_text();
        let mut d = format!(
            r#"<QueueDescription xmlns="{CONNECT_NS}" xmlns:i="{XSI_NS}"><LockDuration>PT1M</LockDuration><MaxSizeInMegabytes>1024</MaxSizeInMegabytes><RequiresDuplicateDetection>false</RequiresDuplicateDetection><RequiresSession>false</RequiresSession><DefaultMessageTimeToLive>{FOREVER}</DefaultMessageTimeToLive><DeadLetteringOnMessageExpiration>false</DeadLetteringOnMessageExpiration><DuplicateDetectionHistoryTimeWindow>PT10M</DuplicateDetectionHistoryTimeWindow><MaxDeliveryCount>10</MaxDeliveryCount><EnableBatchedOperations>true</EnableBatchedOperations><SizeInBytes>{}</SizeInBytes><MessageCount>{}</MessageCount><IsAnonymousAccessible>false</IsAnonymousAccessible><AuthorizationRules></AuthorizationRules><Status>Active</Status><CreatedAt>{now}</CreatedAt><UpdatedAt>{now}</UpdatedAt><AccessedAt>{now}</AccessedAt><SupportOrdering>true</SupportOrdering>{}<AutoDeleteOnIdle>{FOREVER}</AutoDeleteOnIdle><EnablePartitioning>false</EnablePartitioning>"#,
            c.total().saturating_mul(BYTES_PER_MESSAGE),
            c.total(),
            self.counts(c, false),
        );
        // 2017-04 repeats two flags after the counts; 2021-05 adds the message size limit.
        match self.version {
            ApiVersion::V2017_04 => d.push_str(
                "<IsAnonymousAccessible>false</IsAnonymousAccessible><SupportOrdering>true</SupportOrdering><EntityAvailabilityStatus>Available</EntityAvailabilityStatus><EnableExpress>false</EnableExpress>",
            ),
            ApiVersion::V2021_05 => d.push_str(
                "<EntityAvailabilityStatus>Available</EntityAvailabilityStatus><EnableExpress>false</EnableExpress><MaxMessageSizeInKilobytes>256</MaxMessageSizeInKilobytes>",
            ),
        }
        d.push_str("</QueueDescription>");
        let in_feed = feed_url.map(|u| (u, format!("../{name}?api-version={api}")));
        self.entry(&id, name, true, in_feed, d)
    }

    pub(super) fn topic_entry(&self, t: &Topic, feed_url: Option<&str>) -> String {
        let api = &self.api;
        let name = &t.name;
        let id = format!("https://{}/{name}?api-version={api}", self.host);
        let now = now_text();
        let size: u64 = t
            .subscriptions
            .values()
            .map(|s| s.counts.total())
            .sum::<u64>()
            .saturating_mul(BYTES_PER_MESSAGE);
        let mut d = format!(
            r#"<TopicDescription xmlns="{CONNECT_NS}" xmlns:i="{XSI_NS}"><DefaultMessageTimeToLive>{FOREVER}</DefaultMessageTimeToLive><MaxSizeInMegabytes>1024</MaxSizeInMegabytes><RequiresDuplicateDetection>false</RequiresDuplicateDetection><DuplicateDetectionHistoryTimeWindow>PT10M</DuplicateDetectionHistoryTimeWindow><EnableBatchedOperations>true</EnableBatchedOperations><SizeInBytes>{size}</SizeInBytes><FilteringMessagesBeforePublishing>false</FilteringMessagesBeforePublishing><IsAnonymousAccessible>false</IsAnonymousAccessible><AuthorizationRules></AuthorizationRules><Status>Active</Status><CreatedAt>{now}</CreatedAt><UpdatedAt>{now}</UpdatedAt><AccessedAt>{now}</AccessedAt><SupportOrdering>false</SupportOrdering>{}<SubscriptionCount>{}</SubscriptionCount><AutoDeleteOnIdle>{FOREVER}</AutoDeleteOnIdle><EnablePartitioning>false</EnablePartitioning>"#,
            self.counts(&t.counts, false),
            t.subscriptions.len(),
        );
        if self.version == ApiVersion::V2017_04 {
            d.push_str("<FilteringMessagesBeforePublishing>false</FilteringMessagesBeforePublishing><IsAnonymousAccessible>false</IsAnonymousAccessible>");
        }
        d.push_str("<EntityAvailabilityStatus>Available</EntityAvailabilityStatus><EnableSubscriptionPartitioning>false</EnableSubscriptionPartitioning><EnableExpress>false</EnableExpress></TopicDescription>");
        let in_feed = feed_url.map(|u| (u, format!("../{name}?api-version={api}")));
        self.entry(&id, name, true, in_feed, d)
    }

    /// `in_feed`: the feed's URL and the `Subscriptions` segment as the request spelt it.
    pub(super) fn subscription_entry(
        &self,
        t: &Topic,
        s: &Entity,
        in_feed: Option<(&str, &str)>,
    ) -> String {
        let api = &self.api;
        let (topic, name) = (&t.name, &s.name);
        let c = &s.counts;
        let now = now_text();
        let mut d = format!(
            r#"<SubscriptionDescription xmlns="{CONNECT_NS}" xmlns:i="{XSI_NS}"><LockDuration>PT1M</LockDuration><RequiresSession>false</RequiresSession><DefaultMessageTimeToLive>{FOREVER}</DefaultMessageTimeToLive><DeadLetteringOnMessageExpiration>false</DeadLetteringOnMessageExpiration><DeadLetteringOnFilterEvaluationExceptions>true</DeadLetteringOnFilterEvaluationExceptions><MessageCount>{}</MessageCount><MaxDeliveryCount>10</MaxDeliveryCount><EnableBatchedOperations>true</EnableBatchedOperations><Status>Active</Status><CreatedAt>{now}</CreatedAt><UpdatedAt>{now}</UpdatedAt><AccessedAt>{now}</AccessedAt>{}<AutoDeleteOnIdle>{FOREVER}</AutoDeleteOnIdle><EntityAvailabilityStatus>Available</EntityAvailabilityStatus>"#,
            c.total(),
            self.counts(c, in_feed.is_none()),
        );
        if self.version == ApiVersion::V2021_05 {
            d.push_str("<IsClientAffine>false</IsClientAffine>");
        }
        d.push_str("</SubscriptionDescription>");
        match in_feed {
            // Listed: an https id without the query's extras, a link relative to the feed.
            Some((url, segment)) => {
                let id = format!(
                    "https://{}/{topic}/{segment}/{name}?api-version={api}",
                    self.host
                );
                let rel = format!("{segment}/{name}?api-version={api}");
                self.entry(&id, name, false, Some((url, rel)), d)
            }
            // Read alone: the service names it with the sb:// scheme.
            None => {
                let id = format!(
                    "sb://{}/{topic}/Subscriptions/{name}?api-version={api}",
                    self.host
                );
                self.entry(&id, name, false, None, d)
            }
        }
    }
}
