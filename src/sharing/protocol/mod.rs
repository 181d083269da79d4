//! The wire shapes between instances, in one place for the side that sends them and the side
//! that reads them (Cozy's shapes, with hearth's few optional additions, each documented):
//! - [`replication`]: `_revs_diff` and `_bulk_docs` (sent by `sync::replication::PeerTarget`,
//!   read by `sharing::receive` behind `http::sharings`);
//! - [`content`]: the files content channel's `_content_diff` (sent by `sync::content`, read
//!   by `http::content`);
//! - [`jsonapi`]: the JSON:API documents of `/sharings` exchanged between instances: the
//!   answer and its credentials, new credentials, the member list, delegated recipients
//!   (sent and read by `sharing::service`, routed by `http::sharings::peers`);
//! - [`request`]: the sharing request an owner serves a recipient's instance (written and read
//!   by `sharing::request`).
//!
//! Document bodies are never parsed into these types: they travel as the text they were
//! written as (`RawValue`, see `store::body`).
//!
//! What a peer sends is read leniently, as it always was: a member of the wrong type counts as
//! absent ([`Lenient`]), and the service decides whether it was needed (with the 400 it always
//! answered).

pub mod content;
pub mod jsonapi;
pub mod replication;
pub mod request;

pub use content::{ContentDiffAnswer, ContentDiffRequest, ContentOffer, MAX_DIFF};
pub use jsonapi::*;
pub use replication::*;
pub use request::{RequestAttributes, RequestMeta, RequestResource, SharingRequest, MAX_WIRE_MEMBERS};

use serde::{Deserialize, Deserializer, Serialize, Serializer};
use serde_json::Value;

/// A value read leniently: `Some` when the JSON there has the expected shape, `None` otherwise
/// (wrong type, out of range, and an array read as anything but a list: serde would read it
/// into an object's members by position).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Lenient<T>(pub Option<T>);

impl<T> Default for Lenient<T> {
    fn default() -> Self {
        Lenient(None)
    }
}

impl<'de, T: serde::de::DeserializeOwned> Deserialize<'de> for Lenient<T> {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        Ok(Lenient(not_a_list(Value::deserialize(d)?)))
    }
}

impl<T: Serialize> Serialize for Lenient<T> {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        self.0.serialize(serializer)
    }
}

/// `v` read as a `T`, unless it is an array or not of that shape.
pub(crate) fn not_a_list<T: serde::de::DeserializeOwned>(v: Value) -> Option<T> {
    if v.is_array() {
        return None;
    }
    serde_json::from_value(v).ok()
}

/// `v` read as a `T`, when it is an object of that shape.
pub(crate) fn object<T: serde::de::DeserializeOwned>(v: Value) -> Option<T> {
    v.is_object().then(|| serde_json::from_value(v).ok()).flatten()
}

/// `#[serde(deserialize_with)]` helper: a list of at most `max` items; the parse stops at the
/// first one past it (so a hostile peer's list costs at most `max` items in memory).
pub(crate) fn bounded<'de, D: Deserializer<'de>, T: Deserialize<'de>>(d: D, max: usize) -> Result<Vec<T>, D::Error> {
    struct Bounded<T>(usize, std::marker::PhantomData<T>);
    impl<'de, T: Deserialize<'de>> serde::de::Visitor<'de> for Bounded<T> {
        type Value = Vec<T>;
        fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
            write!(f, "a list of at most {} items", self.0)
        }
        fn visit_seq<A: serde::de::SeqAccess<'de>>(self, mut seq: A) -> Result<Vec<T>, A::Error> {
            let mut out = Vec::new();
            while let Some(item) = seq.next_element()? {
                if out.len() == self.0 {
                    return Err(serde::de::Error::custom(format!("more than {} items", self.0)));
                }
                out.push(item);
            }
            Ok(out)
        }
    }
    d.deserialize_seq(Bounded(max, std::marker::PhantomData))
}

/// `#[serde(deserialize_with)]` for a flag read leniently without buffering: `true` only when
/// the member is `true`; any other value, however large, is skipped as it is read (where
/// [`or_default`] reads it into a `Value` first). For what a hostile peer sends in bulk.
pub(crate) fn flag<'de, D: Deserializer<'de>>(d: D) -> Result<bool, D::Error> {
    d.deserialize_any(Skipping(|v: Scalar| matches!(v, Scalar::Bool(true))))
}

/// `#[serde(deserialize_with)]` for an optional text read leniently without buffering: `None`
/// unless a string (see [`flag`]).
pub(crate) fn text<'de, D: Deserializer<'de>>(d: D) -> Result<Option<String>, D::Error> {
    d.deserialize_any(Skipping(|v: Scalar| match v {
        Scalar::Text(t) => Some(t),
        _ => None,
    }))
}

/// `#[serde(deserialize_with)]` for an optional object read leniently without buffering: `None`
/// unless an object, read as a `T` (whose members must themselves be lenient); anything else
/// is skipped as it is read.
pub(crate) fn lenient_object<'de, D: Deserializer<'de>, T: Deserialize<'de>>(d: D) -> Result<Option<T>, D::Error> {
    struct Object<T>(std::marker::PhantomData<T>);
    impl<'de, T: Deserialize<'de>> serde::de::Visitor<'de> for Object<T> {
        type Value = Option<T>;
        fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
            f.write_str("any value")
        }
        fn visit_map<A: serde::de::MapAccess<'de>>(self, map: A) -> Result<Option<T>, A::Error> {
            T::deserialize(serde::de::value::MapAccessDeserializer::new(map)).map(Some)
        }
        fn visit_seq<A: serde::de::SeqAccess<'de>>(self, mut seq: A) -> Result<Option<T>, A::Error> {
            while seq.next_element::<serde::de::IgnoredAny>()?.is_some() {}
            Ok(None)
        }
        fn visit_bool<E>(self, _: bool) -> Result<Option<T>, E> {
            Ok(None)
        }
        fn visit_i64<E>(self, _: i64) -> Result<Option<T>, E> {
            Ok(None)
        }
        fn visit_u64<E>(self, _: u64) -> Result<Option<T>, E> {
            Ok(None)
        }
        fn visit_f64<E>(self, _: f64) -> Result<Option<T>, E> {
            Ok(None)
        }
        fn visit_str<E>(self, _: &str) -> Result<Option<T>, E> {
            Ok(None)
        }
        fn visit_unit<E>(self) -> Result<Option<T>, E> {
            Ok(None)
        }
    }
    d.deserialize_any(Object(std::marker::PhantomData))
}

/// A scalar as [`Skipping`] hands it over (lists and objects are skipped, never built).
enum Scalar {
    Bool(bool),
    Text(String),
    Other,
}

/// A visitor that reads a scalar into `f` and skips anything else without building it.
struct Skipping<F>(F);

impl<'de, T, F: FnOnce(Scalar) -> T> serde::de::Visitor<'de> for Skipping<F> {
    type Value = T;
    fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
        f.write_str("any value")
    }
    fn visit_bool<E>(self, v: bool) -> Result<T, E> {
        Ok((self.0)(Scalar::Bool(v)))
    }
    fn visit_i64<E>(self, _: i64) -> Result<T, E> {
        Ok((self.0)(Scalar::Other))
    }
    fn visit_u64<E>(self, _: u64) -> Result<T, E> {
        Ok((self.0)(Scalar::Other))
    }
    fn visit_f64<E>(self, _: f64) -> Result<T, E> {
        Ok((self.0)(Scalar::Other))
    }
    fn visit_str<E>(self, v: &str) -> Result<T, E> {
        Ok((self.0)(Scalar::Text(v.to_owned())))
    }
    fn visit_unit<E>(self) -> Result<T, E> {
        Ok((self.0)(Scalar::Other))
    }
    fn visit_seq<A: serde::de::SeqAccess<'de>>(self, mut seq: A) -> Result<T, A::Error> {
        while seq.next_element::<serde::de::IgnoredAny>()?.is_some() {}
        Ok((self.0)(Scalar::Other))
    }
    fn visit_map<A: serde::de::MapAccess<'de>>(self, mut map: A) -> Result<T, A::Error> {
        while map.next_entry::<serde::de::IgnoredAny, serde::de::IgnoredAny>()?.is_some() {}
        Ok((self.0)(Scalar::Other))
    }
}

/// `#[serde(deserialize_with)]` for an optional member read leniently (see [`Lenient`]).
pub(crate) fn lenient<'de, D: Deserializer<'de>, T: serde::de::DeserializeOwned>(d: D) -> Result<Option<T>, D::Error> {
    Ok(Lenient::<T>::deserialize(d)?.0)
}

/// `#[serde(deserialize_with)]` for an optional list read leniently: `None` unless an array,
/// each item read leniently.
pub(crate) fn lenient_list<'de, D: Deserializer<'de>, T: serde::de::DeserializeOwned>(
    d: D,
) -> Result<Option<Vec<Lenient<T>>>, D::Error> {
    Ok(match Value::deserialize(d)? {
        Value::Array(items) => Some(items.into_iter().map(|i| Lenient(not_a_list(i))).collect()),
        _ => None,
    })
}

/// `#[serde(deserialize_with)]` for a member read leniently, its default when absent or of the
/// wrong shape (a flag is true only when the member is `true`).
pub(crate) fn or_default<'de, D: Deserializer<'de>, T: serde::de::DeserializeOwned + Default>(
    d: D,
) -> Result<T, D::Error> {
    Ok(Lenient::<T>::deserialize(d)?.0.unwrap_or_default())
}

/// `#[serde(deserialize_with)]` (with `default`) for a member whose presence counts even when
/// it is `null` or of the wrong shape: absent is `None`, present is `Some`, holding `None`
/// unless it reads as a `T`.
pub(crate) fn present<'de, D: Deserializer<'de>, T: serde::de::DeserializeOwned>(
    d: D,
) -> Result<Option<Lenient<T>>, D::Error> {
    Ok(Some(Lenient::<T>::deserialize(d)?))
}

/// A wire object: its optional members (`Option<T>`, absent when `None`, read leniently) then,
/// after `;`, those always written (read leniently, their default when absent; not lists,
/// which [`Lenient`] never reads). Members are written in the order given: alphabetical, as a
/// JSON value writes them.
macro_rules! wire_object {
    (
        $(#[$meta:meta])*
        pub struct $name:ident {
            $($(#[$fmeta:meta])* $field:ident: $ty:ty,)*
            $(; $($(#[$ameta:meta])* $always:ident: $aty:ty,)*)?
        }
    ) => {
        $(#[$meta])*
        #[derive(Debug, Clone, Default, PartialEq, serde::Serialize, serde::Deserialize)]
        pub struct $name {
            $(
                $(#[$fmeta])*
                #[serde(default, deserialize_with = "crate::sharing::protocol::lenient")]
                #[serde(skip_serializing_if = "Option::is_none")]
                pub $field: Option<$ty>,
            )*
            $($(
                $(#[$ameta])*
                #[serde(default, deserialize_with = "crate::sharing::protocol::or_default")]
                pub $always: $aty,
            )*)?
        }
    };
}
pub(crate) use wire_object;
