//! The Prometheus API answer as the scaler reads it: the envelope, and the result's values
//! only, at most [`MAX_SERIES`] of them.
//!
//! `prometheus-http-query`'s wire types keep every series' labels in a map, so a 2 MiB
//! answer grows to several times that in memory, and they read any number of series. A
//! scaling signal needs the values alone: this decoder skips the labels without keeping
//! them (serde's `IgnoredAny`), stops at the series cap, and reads `result` whether it comes
//! before or after `resultType` (serde's tagged enums would buffer the whole result to find
//! the tag first). The crate's error type is still used for `{"status":"error"}` answers.

use std::fmt;

use prometheus_http_query::error::PrometheusError;
use serde::Deserialize;
use serde::de::{self, Deserializer, IgnoredAny, MapAccess, SeqAccess, Visitor};

/// An answer with more series than this is refused: no scaling query returns that many,
/// and each one costs the scaler memory and time to read.
pub const MAX_SERIES: usize = 10_000;

/// The start of the decoder's error past [`MAX_SERIES`], for telling it apart.
pub const TOO_MANY_SERIES: &str = "more than 10000 series";

/// The envelope of every Prometheus API answer.
#[derive(Deserialize)]
#[serde(tag = "status", rename_all = "lowercase")]
pub enum Envelope {
    Success { data: Data },
    Error(PrometheusError),
}

/// A query's result: the value of each series, or of the scalar.
#[derive(Clone, Debug, PartialEq)]
pub enum Data {
    Vector(Vec<f64>),
    Scalar(f64),
    /// A range vector: a query problem for an instant query; its samples are not read.
    Matrix,
}

/// What `result` held, before `resultType` says which it must be.
enum Result_ {
    Series(Vec<f64>),
    Matrix,
    Pair(f64),
    Empty,
}

impl<'de> Deserialize<'de> for Data {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        d.deserialize_map(DataVisitor)
    }
}

struct DataVisitor;

impl<'de> Visitor<'de> for DataVisitor {
    type Value = Data;

    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
        f.write_str("a query result with `resultType` and `result`")
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Data, A::Error> {
        let (mut kind, mut result): (Option<String>, Option<Result_>) = (None, None);
        while let Some(key) = map.next_key::<String>()? {
            match key.as_str() {
                "resultType" => kind = Some(map.next_value()?),
                "result" => result = Some(map.next_value::<ResultSeq>()?.0),
                _ => {
                    map.next_value::<IgnoredAny>()?;
                }
            }
        }
        let kind = kind.ok_or_else(|| de::Error::missing_field("resultType"))?;
        let result = result.ok_or_else(|| de::Error::missing_field("result"))?;
        match (kind.as_str(), result) {
            ("vector", Result_::Series(v)) => Ok(Data::Vector(v)),
            ("vector", Result_::Empty) => Ok(Data::Vector(Vec::new())),
            ("matrix", Result_::Matrix | Result_::Empty) => Ok(Data::Matrix),
            ("scalar", Result_::Pair(v)) => Ok(Data::Scalar(v)),
            (other, _) => Err(de::Error::custom(format!(
                "a `{}` result in a shape that is not one",
                other.chars().take(20).collect::<String>()
            ))),
        }
    }
}

/// `result`: an array of series (vector, matrix) or a `[time, "value"]` pair (scalar).
struct ResultSeq(Result_);

impl<'de> Deserialize<'de> for ResultSeq {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        d.deserialize_seq(ResultVisitor).map(ResultSeq)
    }
}

struct ResultVisitor;

impl<'de> Visitor<'de> for ResultVisitor {
    type Value = Result_;

    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
        f.write_str("an array of series or a [time, value] pair")
    }

    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Result_, A::Error> {
        let mut values = Vec::new();
        let mut matrix = false;
        let mut pair: Option<f64> = None;
        let mut seen = 0usize;
        while let Some(element) = seq.next_element::<Element>()? {
            seen += 1;
            match element {
                Element::Series { value: Some(v) } if !matrix && pair.is_none() => {
                    if values.len() == MAX_SERIES {
                        return Err(de::Error::custom(TOO_MANY_SERIES));
                    }
                    values.push(v);
                }
                Element::Series { value: None } if values.is_empty() && pair.is_none() => {
                    matrix = true
                }
                // A scalar is `[time, "value"]`: the time, then the value.
                Element::Time if seen == 1 => {}
                Element::Value(v) if seen == 2 => pair = Some(v),
                _ => return Err(de::Error::custom("a result array of mixed shapes")),
            }
        }
        Ok(match (values.is_empty(), matrix, pair, seen) {
            (_, _, _, 0) => Result_::Empty,
            (_, _, Some(v), 2) => Result_::Pair(v),
            (_, true, None, _) => Result_::Matrix,
            (false, false, None, _) => Result_::Series(values),
            _ => return Err(de::Error::custom("a result array of mixed shapes")),
        })
    }
}

/// One element of `result`.
enum Element {
    /// A series; `value` is `None` for a range vector's (it has `values` instead).
    Series { value: Option<f64> },
    /// A scalar's time.
    Time,
    /// A scalar's value.
    Value(f64),
}

impl<'de> Deserialize<'de> for Element {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        d.deserialize_any(ElementVisitor)
    }
}

struct ElementVisitor;

impl<'de> Visitor<'de> for ElementVisitor {
    type Value = Element;

    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
        f.write_str("a series, a time or a value")
    }

    fn visit_f64<E: de::Error>(self, _: f64) -> Result<Element, E> {
        Ok(Element::Time)
    }

    fn visit_u64<E: de::Error>(self, _: u64) -> Result<Element, E> {
        Ok(Element::Time)
    }

    fn visit_i64<E: de::Error>(self, _: i64) -> Result<Element, E> {
        Ok(Element::Time)
    }

    fn visit_str<E: de::Error>(self, v: &str) -> Result<Element, E> {
        sample_value(v).map(Element::Value)
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Element, A::Error> {
        let mut value = None;
        let mut range = false;
        while let Some(key) = map.next_key::<String>()? {
            match key.as_str() {
                "value" => value = Some(map.next_value::<Sample>()?.0),
                "values" => {
                    range = true;
                    map.next_value::<IgnoredAny>()?;
                }
                // `metric` (the labels) and anything newer: skipped, not kept.
                _ => {
                    map.next_value::<IgnoredAny>()?;
                }
            }
        }
        match (value, range) {
            (Some(v), false) => Ok(Element::Series { value: Some(v) }),
            (None, true) => Ok(Element::Series { value: None }),
            _ => Err(de::Error::custom("a series without one `value`")),
        }
    }
}

/// `[time, "value"]`: the value.
struct Sample(f64);

impl<'de> Deserialize<'de> for Sample {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let (_, value): (IgnoredAny, String) = Deserialize::deserialize(d)?;
        sample_value(&value).map(Sample)
    }
}

/// Prometheus writes values as strings: `"1.5"`, `"NaN"`, `"+Inf"`, `"-Inf"`.
fn sample_value<E: de::Error>(text: &str) -> Result<f64, E> {
    text.parse::<f64>().map_err(|_| {
        E::custom(format!(
            "`{}` is not a sample value",
            text.chars().take(20).collect::<String>()
        ))
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn data(json: &str) -> Result<Data, String> {
        serde_json::from_str::<Data>(json).map_err(|e| e.to_string())
    }

    #[test]
    fn values_are_read_whatever_the_order_of_the_fields() {
        let v = r#"{"result":[{"metric":{"a":"b"},"value":[1.5,"2"]},{"value":[1,"NaN"],"metric":{}}],"resultType":"vector"}"#;
        let Data::Vector(values) = data(v).unwrap() else {
            panic!("a vector")
        };
        assert_eq!(values[0], 2.0);
        assert!(values[1].is_nan());
        assert_eq!(
            data(r#"{"resultType":"scalar","result":[1700000000,"+Inf"]}"#),
            Ok(Data::Scalar(f64::INFINITY))
        );
        assert_eq!(
            data(r#"{"resultType":"vector","result":[]}"#),
            Ok(Data::Vector(vec![]))
        );
        assert_eq!(
            data(r#"{"resultType":"matrix","result":[{"metric":{},"values":[[1,"1"]]}]}"#),
            Ok(Data::Matrix)
        );
    }

    #[test]
    fn results_of_the_wrong_shape_are_refused() {
        for bad in [
            r#"{"resultType":"vector","result":[1,"2"]}"#,
            r#"{"resultType":"scalar","result":[{"value":[1,"2"]}]}"#,
            r#"{"resultType":"vector","result":[{"metric":{}}]}"#,
            r#"{"resultType":"vector","result":[{"value":[1,"two"]}]}"#,
            r#"{"resultType":"vector"}"#,
            r#"{"resultType":"string","result":[1,"x"]}"#,
        ] {
            assert!(data(bad).is_err(), "{bad}");
        }
    }

    /// docs/security.md "Capacity": 15 MiB answers of small series took 614 MiB to read.
    #[test]
    fn more_series_than_the_cap_are_refused_while_reading() {
        let series = r#"{"metric":{"pod":"p"},"value":[1,"1"]}"#;
        let body = |n: usize| {
            format!(
                r#"{{"resultType":"vector","result":[{}]}}"#,
                vec![series; n].join(",")
            )
        };
        let Data::Vector(v) = data(&body(MAX_SERIES)).unwrap() else {
            panic!("a vector")
        };
        assert_eq!(v.len(), MAX_SERIES);
        let e = data(&body(MAX_SERIES + 1)).unwrap_err();
        assert!(e.starts_with(TOO_MANY_SERIES), "{e}");
    }
}
