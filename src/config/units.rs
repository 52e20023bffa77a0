//! Sizes and durations in the configuration, parsed once when it is loaded: a bad value
//! is an error naming its key (`limits.student.max_memory: `lots` is not a size like
//! `256G``), and nothing later re-parses the text or falls back silently.

use std::fmt;

use serde::{Deserialize, Deserializer};

/// A size in bytes, as written (`512M`, `20G`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Size {
    pub bytes: u64,
    text: String,
}

impl Size {
    pub fn new(text: &str) -> Result<Size, String> {
        crate::values::parse_size(text)
            .map(|bytes| Size {
                bytes,
                text: text.to_string(),
            })
            .map_err(|_| format!("`{text}` is not a size like `256G`"))
    }
}

impl fmt::Display for Size {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.text)
    }
}

impl<'de> Deserialize<'de> for Size {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        Size::new(&s).map_err(serde::de::Error::custom)
    }
}

/// A duration in seconds, as written (`1d`, `12h`, `1-12:00:00`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Seconds {
    pub secs: u64,
    text: String,
}

impl Seconds {
    pub fn new(text: &str) -> Result<Seconds, String> {
        crate::values::parse_duration(text)
            .map(|secs| Seconds {
                secs,
                text: text.to_string(),
            })
            .map_err(|_| format!("`{text}` is not a duration like `1d`"))
    }
}

impl fmt::Display for Seconds {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.text)
    }
}

impl<'de> Deserialize<'de> for Seconds {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        Seconds::new(&s).map_err(serde::de::Error::custom)
    }
}

/// For defaults written in the code: they are known to parse.
pub fn size(text: &str) -> Size {
    Size::new(text).unwrap_or(Size {
        bytes: 0,
        text: text.to_string(),
    })
}

pub fn seconds(text: &str) -> Seconds {
    Seconds::new(text).unwrap_or(Seconds {
        secs: 0,
        text: text.to_string(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parsed_once_and_shown_as_written() {
        let s = Size::new("512M").unwrap();
        assert_eq!(
            (s.bytes, s.to_string()),
            (512 * 1024 * 1024, "512M".to_string())
        );
        assert!(Size::new("lots").unwrap_err().contains("`lots`"));
        let d = Seconds::new("1d").unwrap();
        assert_eq!((d.secs, d.to_string()), (86_400, "1d".to_string()));
        assert!(Seconds::new("soon").is_err());
        // Every default in the code parses.
        for t in ["2G", "16G", "32G", "20G", "4G"] {
            assert!(Size::new(t).is_ok(), "{t}");
        }
        for t in ["1d", "1h"] {
            assert!(Seconds::new(t).is_ok(), "{t}");
        }
    }
}
