//! Internally tagged enums (`{"type": "text", ...}`) without serde's buffering.
//!
//! serde's `#[serde(tag = "type")]` reads every block into an intermediate
//! tree of its own (each string copied, each object a vector of entries)
//! and then deserializes the variant from that tree. Content blocks are
//! most of a conversation, so that doubled the allocations of a parse.
//!
//! Here the block is read as a map: the entries before `"type"` (rare:
//! Claude Code puts `tool_use_id` first in a `tool_result`) are buffered as
//! `serde_json::Value`s, and once the tag is known the rest of the entries
//! go straight from the parser into the variant's fields. The enum derives
//! its variants' visitors with `#[serde(remote = "Self")]`, externally
//! tagged, and this module drives them with the tag it found, so the
//! variant definitions stay declarative and `#[serde(other)]` still maps an
//! unknown tag to the catch-all variant.

use serde::de::value::MapAccessDeserializer;
use serde::de::{
    self, DeserializeSeed, Deserializer, EnumAccess, IgnoredAny, IntoDeserializer, MapAccess,
    VariantAccess, Visitor,
};
use std::borrow::Cow;
use std::fmt;
use std::marker::PhantomData;

/// An enum whose `#[serde(remote = "Self")]` derive (externally tagged)
/// deserializes one variant from `{"variant": {fields}}`.
pub trait ExternallyTagged<'de>: Sized {
    /// What the enum is, for error messages ("a content block").
    const EXPECTING: &'static str;
    fn deserialize_variant<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error>;
}

/// Deserializes `T` from a map that carries its variant under `"type"`.
pub fn deserialize<'de, D, T>(deserializer: D) -> Result<T, D::Error>
where
    D: Deserializer<'de>,
    T: ExternallyTagged<'de>,
{
    deserializer.deserialize_map(TaggedVisitor(PhantomData))
}

struct TaggedVisitor<T>(PhantomData<T>);

impl<'de, T: ExternallyTagged<'de>> Visitor<'de> for TaggedVisitor<T> {
    type Value = T;

    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
        f.write_str(T::EXPECTING)
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<T, A::Error> {
        let mut before_tag = Vec::new();
        while let Some(key) = map.next_key::<Key<'de>>()? {
            if key.0 == "type" {
                let tag = map.next_value::<Key<'de>>()?.0;
                let rest = Rest {
                    buffered: before_tag.into_iter(),
                    pending: None,
                    live: map,
                };
                return T::deserialize_variant(Variant { tag, rest });
            }
            let value = map.next_value::<serde_json::Value>()?;
            before_tag.push((key.0.into_owned(), value));
        }
        Err(de::Error::missing_field("type"))
    }
}

/// A string borrowed from the input when it has no escapes.
struct Key<'de>(Cow<'de, str>);

impl<'de> de::Deserialize<'de> for Key<'de> {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl<'de> Visitor<'de> for V {
            type Value = Key<'de>;
            fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                f.write_str("a string")
            }
            fn visit_borrowed_str<E: de::Error>(self, v: &'de str) -> Result<Key<'de>, E> {
                Ok(Key(Cow::Borrowed(v)))
            }
            fn visit_str<E: de::Error>(self, v: &str) -> Result<Key<'de>, E> {
                Ok(Key(Cow::Owned(v.to_owned())))
            }
            fn visit_string<E: de::Error>(self, v: String) -> Result<Key<'de>, E> {
                Ok(Key(Cow::Owned(v)))
            }
        }
        d.deserialize_str(V)
    }
}

/// The map's entries after the tag: first those read before it, then the
/// rest straight from the parser.
struct Rest<A> {
    buffered: std::vec::IntoIter<(String, serde_json::Value)>,
    pending: Option<serde_json::Value>,
    live: A,
}

impl<'de, A: MapAccess<'de>> MapAccess<'de> for Rest<A> {
    type Error = A::Error;

    fn next_key_seed<K: DeserializeSeed<'de>>(
        &mut self,
        seed: K,
    ) -> Result<Option<K::Value>, A::Error> {
        if let Some((key, value)) = self.buffered.next() {
            self.pending = Some(value);
            return seed.deserialize(key.as_str().into_deserializer()).map(Some);
        }
        self.live.next_key_seed(seed)
    }

    fn next_value_seed<V: DeserializeSeed<'de>>(&mut self, seed: V) -> Result<V::Value, A::Error> {
        match self.pending.take() {
            Some(value) => seed.deserialize(value).map_err(de::Error::custom),
            None => self.live.next_value_seed(seed),
        }
    }
}

/// The derive's view: an enum whose variant is the tag and whose content
/// is the rest of the map.
struct Variant<'de, A> {
    tag: Cow<'de, str>,
    rest: Rest<A>,
}

impl<'de, A: MapAccess<'de>> Deserializer<'de> for Variant<'de, A> {
    type Error = A::Error;

    fn deserialize_any<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, A::Error> {
        visitor.visit_enum(self)
    }

    serde::forward_to_deserialize_any! {
        bool i8 i16 i32 i64 i128 u8 u16 u32 u64 u128 f32 f64 char str string
        bytes byte_buf option unit unit_struct newtype_struct seq tuple
        tuple_struct map struct enum identifier ignored_any
    }
}

impl<'de, A: MapAccess<'de>> EnumAccess<'de> for Variant<'de, A> {
    type Error = A::Error;
    type Variant = Rest<A>;

    fn variant_seed<V: DeserializeSeed<'de>>(
        self,
        seed: V,
    ) -> Result<(V::Value, Rest<A>), A::Error> {
        let variant = seed.deserialize(self.tag.as_ref().into_deserializer())?;
        Ok((variant, self.rest))
    }
}

impl<'de, A: MapAccess<'de>> VariantAccess<'de> for Rest<A> {
    type Error = A::Error;

    /// A variant without fields (or the catch-all): the other entries are
    /// read and dropped.
    fn unit_variant(mut self) -> Result<(), A::Error> {
        while self.next_key::<IgnoredAny>()?.is_some() {
            self.next_value::<IgnoredAny>()?;
        }
        Ok(())
    }

    fn newtype_variant_seed<T: DeserializeSeed<'de>>(self, seed: T) -> Result<T::Value, A::Error> {
        seed.deserialize(MapAccessDeserializer::new(self))
    }

    fn tuple_variant<V: Visitor<'de>>(self, _len: usize, _v: V) -> Result<V::Value, A::Error> {
        Err(de::Error::custom("tuple variants are not supported"))
    }

    fn struct_variant<V: Visitor<'de>>(
        self,
        _fields: &'static [&'static str],
        visitor: V,
    ) -> Result<V::Value, A::Error> {
        visitor.visit_map(self)
    }
}

/// `impl Deserialize` for an enum derived with `#[serde(remote = "Self")]`:
/// reads it as internally tagged by `"type"` through this module.
macro_rules! internally_tagged {
    ($enum:ident, $expecting:literal) => {
        impl<'de> $crate::protocol::tagged::ExternallyTagged<'de> for $enum {
            const EXPECTING: &'static str = $expecting;
            fn deserialize_variant<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
                // The derive's inherent function, externally tagged.
                $enum::deserialize(d)
            }
        }
        impl<'de> serde::Deserialize<'de> for $enum {
            fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
                $crate::protocol::tagged::deserialize(d)
            }
        }
    };
}
pub(crate) use internally_tagged;
