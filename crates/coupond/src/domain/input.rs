//! Reading request fields out of a JSON object, collecting one reason per bad field so a
//! client can fix everything in one go. The coercions are the seed's: ids may arrive as
//! numbers or strings, as Django REST Framework accepts them.

use std::collections::BTreeMap;

use serde_json::{Map, Value};
use time::format_description::well_known::Rfc3339;
use time::OffsetDateTime;

/// Field name -> what is wrong with it.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct FieldErrors(pub BTreeMap<String, String>);

impl FieldErrors {
    pub fn add(&mut self, field: &str, reason: impl Into<String>) {
        self.0
            .entry(field.to_owned())
            .or_insert_with(|| reason.into());
    }

    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    pub fn has(&self, field: &str) -> bool {
        self.0.contains_key(field)
    }

    pub fn into_result<T>(self, value: T) -> Result<T, FieldErrors> {
        if self.is_empty() {
            Ok(value)
        } else {
            Err(self)
        }
    }

    /// A one-line summary for the envelope's `message`.
    pub fn summary(&self) -> String {
        let parts: Vec<String> = self.0.iter().map(|(f, r)| format!("{f}: {r}")).collect();
        format!("invalid request: {}", parts.join("; "))
    }
}

/// A view over the request body that records problems as fields are read.
pub struct Fields<'a> {
    object: Option<&'a Map<String, Value>>,
    pub errors: FieldErrors,
}

impl<'a> Fields<'a> {
    pub fn new(body: &'a Value) -> Self {
        let mut errors = FieldErrors::default();
        let object = body.as_object();
        if object.is_none() {
            errors.add("body", "must be a JSON object");
        }
        Fields { object, errors }
    }

    fn get(&self, field: &str) -> Option<&'a Value> {
        // An explicit null means "not given", as DRF treats it for optional fields.
        self.object?.get(field).filter(|v| !v.is_null())
    }

    fn missing(&mut self, field: &str) {
        if self.object.is_some() {
            self.errors.add(field, "required");
        }
    }

    /// A non-empty string of at most `max_chars`; a JSON integer is taken as its decimal
    /// string (the seed's user and order ids are often numeric).
    pub fn required_id_string(&mut self, field: &str, max_chars: usize) -> Option<String> {
        let value = match self.get(field) {
            None => {
                self.missing(field);
                return None;
            }
            Some(Value::String(s)) => s.clone(),
            Some(Value::Number(n)) if n.is_i64() || n.is_u64() => n.to_string(),
            Some(_) => {
                self.errors.add(field, "must be a string");
                return None;
            }
        };
        self.check_string(field, value, max_chars)
    }

    /// A non-empty string of at most `max_chars`; numbers are refused.
    pub fn required_string(&mut self, field: &str, max_chars: usize) -> Option<String> {
        match self.get(field) {
            None => {
                self.missing(field);
                None
            }
            Some(Value::String(s)) => self.check_string(field, s.clone(), max_chars),
            Some(_) => {
                self.errors.add(field, "must be a string");
                None
            }
        }
    }

    /// A string of at most `max_chars`, if given.
    pub fn optional_string(&mut self, field: &str, max_chars: usize) -> Option<String> {
        self.get(field)?;
        self.required_string(field, max_chars)
    }

    fn check_string(&mut self, field: &str, value: String, max_chars: usize) -> Option<String> {
        if value.trim().is_empty() {
            self.errors.add(field, "must not be blank");
            None
        } else if value.chars().count() > max_chars {
            self.errors
                .add(field, format!("must be at most {max_chars} characters"));
            None
        } else if value.chars().any(char::is_control) {
            self.errors
                .add(field, "must not contain control characters");
            None
        } else {
            Some(value)
        }
    }

    /// A positive integer id: a JSON integer or a string of digits.
    pub fn required_id(&mut self, field: &str) -> Option<i64> {
        let parsed = match self.get(field) {
            None => {
                self.missing(field);
                return None;
            }
            Some(Value::Number(n)) => n.as_i64(),
            Some(Value::String(s)) if !s.is_empty() && s.bytes().all(|b| b.is_ascii_digit()) => {
                s.parse::<i64>().ok()
            }
            Some(_) => None,
        };
        match parsed {
            Some(id) if id >= 1 => Some(id),
            _ => {
                self.errors.add(field, "must be a positive integer");
                None
            }
        }
    }

    /// An integer of at least `min`, if given.
    pub fn optional_int(&mut self, field: &str, min: i64) -> Option<i64> {
        let value = self.get(field)?;
        match value.as_i64() {
            Some(n) if n >= min => Some(n),
            Some(_) => {
                self.errors.add(field, format!("must be at least {min}"));
                None
            }
            None => {
                self.errors.add(field, "must be an integer");
                None
            }
        }
    }

    pub fn required_int(&mut self, field: &str, min: i64) -> Option<i64> {
        if self.get(field).is_none() {
            self.missing(field);
            return None;
        }
        self.optional_int(field, min)
    }

    pub fn is_given(&self, field: &str) -> bool {
        self.get(field).is_some()
    }

    /// A string of at most `max_chars` that may be empty, if given.
    pub fn optional_prefix(&mut self, field: &str, max_chars: usize) -> Option<String> {
        match self.get(field)? {
            Value::String(s) if s.chars().count() <= max_chars => Some(s.clone()),
            Value::String(_) => {
                self.errors
                    .add(field, format!("must be at most {max_chars} characters"));
                None
            }
            _ => {
                self.errors.add(field, "must be a string");
                None
            }
        }
    }

    /// An RFC 3339 timestamp, if given.
    pub fn optional_timestamp(&mut self, field: &str) -> Option<OffsetDateTime> {
        self.get(field)?;
        self.required_timestamp(field)
    }

    /// An RFC 3339 timestamp, normalised to UTC.
    pub fn required_timestamp(&mut self, field: &str) -> Option<OffsetDateTime> {
        match self.get(field) {
            None => {
                self.missing(field);
                None
            }
            Some(Value::String(s)) => match OffsetDateTime::parse(s, &Rfc3339) {
                Ok(t) => Some(super::truncate_to_micros(t.to_offset(time::UtcOffset::UTC))),
                Err(_) => {
                    self.errors.add(
                        field,
                        "must be an RFC 3339 timestamp, e.g. 2030-01-31T23:59:59Z",
                    );
                    None
                }
            },
            Some(_) => {
                self.errors
                    .add(field, "must be an RFC 3339 timestamp string");
                None
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn ids_accept_numbers_and_digit_strings() {
        let body = json!({"a": 7, "b": "42", "c": "4x", "d": -1, "e": 1.5, "f": true, "g": "0"});
        let mut f = Fields::new(&body);
        assert_eq!(f.required_id("a"), Some(7));
        assert_eq!(f.required_id("b"), Some(42));
        for bad in ["c", "d", "e", "f", "g"] {
            assert_eq!(f.required_id(bad), None, "{bad}");
            assert!(f.errors.has(bad));
        }
    }

    #[test]
    fn id_strings_take_integers_as_decimal() {
        let body = json!({"u": 12, "v": "", "w": {}, "x": "ok"});
        let mut f = Fields::new(&body);
        assert_eq!(f.required_id_string("u", 64).as_deref(), Some("12"));
        assert_eq!(f.required_id_string("v", 64), None);
        assert_eq!(f.required_id_string("w", 64), None);
        assert_eq!(f.required_id_string("x", 1), None);
        assert_eq!(f.required_id_string("missing", 64), None);
        assert_eq!(
            f.errors.0.get("missing").map(String::as_str),
            Some("required")
        );
    }

    #[test]
    fn a_non_object_body_is_one_error() {
        let body = json!([1, 2]);
        let mut f = Fields::new(&body);
        assert_eq!(f.required_id("batch_id"), None);
        assert_eq!(f.errors.0.len(), 1);
        assert!(f.errors.has("body"));
    }

    #[test]
    fn timestamps_are_normalised_to_utc() {
        let body = json!({"t": "2030-01-01T09:00:00+09:00", "bad": "tomorrow"});
        let mut f = Fields::new(&body);
        let t = f.required_timestamp("t").expect("valid");
        assert_eq!(t.offset(), time::UtcOffset::UTC);
        assert_eq!(t.hour(), 0);
        assert_eq!(f.required_timestamp("bad"), None);
    }
}
