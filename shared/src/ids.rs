//! Identifiers and small domain values that parse instead of validate.

use crate::limits::{MAX_ID_LEN, MAX_KIND_LEN};
use serde::{Deserialize, Deserializer, Serialize};
use std::fmt;
use std::str::FromStr;

/// Why a value could not become an identifier.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum IdError {
    /// The value was empty.
    #[error("{what} must not be empty")]
    Empty {
        /// Which kind of value.
        what: &'static str,
    },
    /// The value was longer than allowed.
    #[error("{what} is {len} bytes long; the limit is {max}")]
    TooLong {
        /// Which kind of value.
        what: &'static str,
        /// Its length.
        len: usize,
        /// The limit.
        max: usize,
    },
    /// The value held a character outside its alphabet.
    #[error("{what} {value:?} may only contain {allowed}")]
    BadChar {
        /// Which kind of value.
        what: &'static str,
        /// The offending input (truncated).
        value: String,
        /// The alphabet, in words.
        allowed: &'static str,
    },
    /// A sequence number was zero.
    #[error("sequence numbers start at 1")]
    ZeroSeq,
}

fn check_id(what: &'static str, s: &str, max: usize) -> Result<(), IdError> {
    if s.is_empty() {
        return Err(IdError::Empty { what });
    }
    if s.len() > max {
        return Err(IdError::TooLong {
            what,
            len: s.len(),
            max,
        });
    }
    let ok_first = s.as_bytes()[0].is_ascii_alphanumeric();
    if !ok_first
        || !s
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.'))
    {
        return Err(IdError::BadChar {
            what,
            value: s.chars().take(80).collect(),
            allowed: "ASCII letters, digits, '-', '_' and '.', starting with a letter or digit",
        });
    }
    Ok(())
}

macro_rules! string_id {
    ($(#[$doc:meta])* $name:ident, $what:literal) => {
        $(#[$doc])*
        #[derive(Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize)]
        #[serde(transparent)]
        pub struct $name(String);

        impl $name {
            /// Parses an identifier, rejecting anything outside the alphabet or too long.
            pub fn parse(s: &str) -> Result<Self, IdError> {
                check_id($what, s, MAX_ID_LEN)?;
                Ok(Self(s.to_owned()))
            }
            /// The identifier as a string slice.
            pub fn as_str(&self) -> &str {
                &self.0
            }
        }
        impl FromStr for $name {
            type Err = IdError;
            fn from_str(s: &str) -> Result<Self, IdError> {
                Self::parse(s)
            }
        }
        impl fmt::Display for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str(&self.0)
            }
        }
        impl fmt::Debug for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                write!(f, "{}({:?})", stringify!($name), self.0)
            }
        }
        impl<'de> Deserialize<'de> for $name {
            fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
                let s = String::deserialize(d)?;
                Self::parse(&s).map_err(serde::de::Error::custom)
            }
        }
    };
}

string_id!(
    /// A device's identifier: 1–64 ASCII letters, digits, `-`, `_`, `.`; safe inside an MQTT topic.
    DeviceId,
    "device id"
);
string_id!(
    /// A member's (subscriber's) identifier: same alphabet and limit as [`DeviceId`].
    MemberId,
    "member id"
);
string_id!(
    /// A replenishment transaction's id, its idempotency key: same alphabet and limit as [`DeviceId`].
    TxId,
    "transaction id"
);
string_id!(
    /// A consumable slot on a device (`pods`, `ink-black`): same alphabet and limit as [`DeviceId`].
    SlotId,
    "slot id"
);
string_id!(
    /// A catalogue article number: same alphabet and limit as [`DeviceId`].
    Sku,
    "sku"
);

/// An ISO 4217 currency code: exactly three uppercase ASCII letters (`EUR`).
#[derive(Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize)]
#[serde(transparent)]
pub struct Currency(String);

impl Currency {
    /// Parses a currency code.
    pub fn parse(s: &str) -> Result<Self, IdError> {
        if s.len() != 3 || !s.bytes().all(|b| b.is_ascii_uppercase()) {
            return Err(IdError::BadChar {
                what: "currency",
                value: s.chars().take(80).collect(),
                allowed: "exactly three uppercase ASCII letters (ISO 4217)",
            });
        }
        Ok(Self(s.to_owned()))
    }
    /// The code as a string slice.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl FromStr for Currency {
    type Err = IdError;
    fn from_str(s: &str) -> Result<Self, IdError> {
        Self::parse(s)
    }
}

impl fmt::Display for Currency {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl fmt::Debug for Currency {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Currency({:?})", self.0)
    }
}

impl<'de> Deserialize<'de> for Currency {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        Self::parse(&s).map_err(serde::de::Error::custom)
    }
}

/// A kind of usage event (`brew`, `print_page`, `ride`): 1–32 bytes of lowercase
/// ASCII letters, digits and `_`, starting with a letter.
#[derive(Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize)]
#[serde(transparent)]
pub struct EventKind(String);

impl EventKind {
    /// Parses an event kind.
    pub fn parse(s: &str) -> Result<Self, IdError> {
        const WHAT: &str = "event kind";
        if s.is_empty() {
            return Err(IdError::Empty { what: WHAT });
        }
        if s.len() > MAX_KIND_LEN {
            return Err(IdError::TooLong {
                what: WHAT,
                len: s.len(),
                max: MAX_KIND_LEN,
            });
        }
        if !s.as_bytes()[0].is_ascii_lowercase()
            || !s
                .bytes()
                .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_')
        {
            return Err(IdError::BadChar {
                what: WHAT,
                value: s.chars().take(80).collect(),
                allowed: "lowercase ASCII letters, digits and '_', starting with a letter",
            });
        }
        Ok(Self(s.to_owned()))
    }
    /// The kind as a string slice.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}
impl FromStr for EventKind {
    type Err = IdError;
    fn from_str(s: &str) -> Result<Self, IdError> {
        Self::parse(s)
    }
}
impl fmt::Display for EventKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}
impl fmt::Debug for EventKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "EventKind({:?})", self.0)
    }
}
impl<'de> Deserialize<'de> for EventKind {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        Self::parse(&s).map_err(serde::de::Error::custom)
    }
}

/// A per-device sequence number: starts at 1, strictly increasing, never reused.
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Debug)]
#[serde(transparent)]
pub struct Seq(u64);

impl Seq {
    /// The first sequence number.
    pub const FIRST: Seq = Seq(1);
    /// Makes a sequence number; zero is not one.
    pub fn new(n: u64) -> Result<Self, IdError> {
        if n == 0 {
            Err(IdError::ZeroSeq)
        } else {
            Ok(Seq(n))
        }
    }
    /// The number itself.
    pub fn get(self) -> u64 {
        self.0
    }
    /// The next sequence number.
    pub fn next(self) -> Seq {
        Seq(self.0 + 1)
    }
}
impl fmt::Display for Seq {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.0)
    }
}
impl FromStr for Seq {
    type Err = IdError;
    fn from_str(s: &str) -> Result<Self, IdError> {
        let n: u64 = s.parse().map_err(|_| IdError::BadChar {
            what: "sequence number",
            value: s.chars().take(80).collect(),
            allowed: "decimal digits",
        })?;
        Seq::new(n)
    }
}
impl<'de> Deserialize<'de> for Seq {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        Seq::new(u64::deserialize(d)?).map_err(serde::de::Error::custom)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn device_ids_accept_topic_safe_names_only() {
        assert!(DeviceId::parse("coffee-01.kitchen_A").is_ok());
        for bad in ["", "a/b", "a+b", "#", "-lead", "é", "a b"] {
            assert!(DeviceId::parse(bad).is_err(), "{bad:?} must be rejected");
        }
        assert!(matches!(
            DeviceId::parse(&"x".repeat(65)),
            Err(IdError::TooLong { .. })
        ));
        assert!(DeviceId::parse(&"x".repeat(64)).is_ok());
    }

    #[test]
    fn event_kinds_are_short_lowercase_identifiers() {
        assert!(EventKind::parse("print_page2").is_ok());
        for bad in ["", "Brew", "2brew", "brew-x", "brew x"] {
            assert!(EventKind::parse(bad).is_err(), "{bad:?} must be rejected");
        }
        assert!(EventKind::parse(&"a".repeat(33)).is_err());
    }

    #[test]
    fn seq_zero_is_rejected_even_when_deserialising() {
        assert!(Seq::new(0).is_err());
        assert!(serde_json::from_str::<Seq>("0").is_err());
        assert_eq!(serde_json::from_str::<Seq>("7").unwrap().get(), 7);
    }

    #[test]
    fn currencies_are_three_uppercase_letters() {
        assert!(Currency::parse("EUR").is_ok());
        for bad in ["eur", "EURO", "E1R", ""] {
            assert!(Currency::parse(bad).is_err(), "{bad}");
        }
        assert!(serde_json::from_str::<Currency>("\"usd\"").is_err());
    }

    #[test]
    fn ids_deserialise_through_parse() {
        assert!(serde_json::from_str::<DeviceId>("\"a/b\"").is_err());
        assert_eq!(
            serde_json::from_str::<MemberId>("\"m-1\"")
                .unwrap()
                .as_str(),
            "m-1"
        );
    }
}
