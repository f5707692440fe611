//! Duplicate keys in a request. serde_json keeps the last of two equal
//! keys without a word; SPDK's decoder refuses them, and a request whose
//! `"size_in_mib"` appears twice is more likely a client bug than a wish
//! for the second value. The bytes of each request are walked once more
//! (requests are small) for the first key an object repeats.

use std::cell::RefCell;
use std::collections::HashSet;
use std::fmt;

use serde::de::{DeserializeSeed, MapAccess, SeqAccess, Visitor};

/// The first repeated key, and whether it is a member of the request
/// object itself (depth 0) or of something inside it (its params).
#[derive(Debug, PartialEq, Eq)]
pub struct Duplicate {
    pub key: String,
    pub in_request: bool,
}

/// The first duplicate key in the JSON value `bytes`, if any. An array
/// at the top is a batch: its elements are the requests.
pub fn find_duplicate(bytes: &[u8]) -> Option<Duplicate> {
    let found = RefCell::new(None);
    let mut de = serde_json::Deserializer::from_slice(bytes);
    // A value that does not parse has no duplicates to report: the
    // caller's parser has already answered it.
    let _ = Walk {
        depth: 0,
        request_depth: 0,
        found: &found,
    }
    .deserialize(&mut de);
    found.into_inner()
}

struct Walk<'a> {
    depth: usize,
    /// Depth of request objects: 0, or 1 inside a batch.
    request_depth: usize,
    found: &'a RefCell<Option<Duplicate>>,
}

impl<'a> Walk<'a> {
    fn inner(&self, request_depth: usize) -> Walk<'a> {
        Walk {
            depth: self.depth + 1,
            request_depth,
            found: self.found,
        }
    }
}

impl<'de> DeserializeSeed<'de> for Walk<'_> {
    type Value = ();
    fn deserialize<D: serde::Deserializer<'de>>(self, d: D) -> Result<(), D::Error> {
        d.deserialize_any(self)
    }
}

impl<'de> Visitor<'de> for Walk<'_> {
    type Value = ();

    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
        f.write_str("any JSON value")
    }

    fn visit_bool<E>(self, _: bool) -> Result<(), E> {
        Ok(())
    }
    fn visit_i64<E>(self, _: i64) -> Result<(), E> {
        Ok(())
    }
    fn visit_u64<E>(self, _: u64) -> Result<(), E> {
        Ok(())
    }
    fn visit_f64<E>(self, _: f64) -> Result<(), E> {
        Ok(())
    }
    fn visit_str<E>(self, _: &str) -> Result<(), E> {
        Ok(())
    }
    fn visit_unit<E>(self) -> Result<(), E> {
        Ok(())
    }

    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<(), A::Error> {
        // Only a top-level array is a batch.
        let rd = if self.depth == 0 {
            1
        } else {
            self.request_depth
        };
        while seq.next_element_seed(self.inner(rd))?.is_some() {}
        Ok(())
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<(), A::Error> {
        let mut keys = HashSet::new();
        while let Some(k) = map.next_key::<String>()? {
            if !keys.insert(k.clone()) && self.found.borrow().is_none() {
                *self.found.borrow_mut() = Some(Duplicate {
                    key: k,
                    in_request: self.depth == self.request_depth,
                });
            }
            map.next_value_seed(self.inner(self.request_depth))?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_first_repeated_key_is_found_with_its_level() {
        let f = |s: &str| find_duplicate(s.as_bytes());
        assert_eq!(f(r#"{"method": "a", "params": {"x": 1, "y": 2}}"#), None);
        assert_eq!(
            f(r#"{"method": "a", "method": "b"}"#),
            Some(Duplicate {
                key: "method".into(),
                in_request: true
            })
        );
        assert_eq!(
            f(r#"{"method": "a", "params": {"n": {"x": 1, "x": 2}}}"#),
            Some(Duplicate {
                key: "x".into(),
                in_request: false
            })
        );
        // In a batch, each element is a request.
        assert_eq!(
            f(r#"[{"method": "a"}, {"method": "a", "id": 1, "id": 2}]"#),
            Some(Duplicate {
                key: "id".into(),
                in_request: true
            })
        );
        // Equal keys in different objects are not duplicates.
        assert_eq!(f(r#"[{"a": {"a": 1}}, {"a": [{"a": 2}]}]"#), None);
    }
}
