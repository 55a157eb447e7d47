//! A small JSON reader (RFC 8259) for downlinks: it validates a whole
//! document once, then hands out borrowed views (strings stay escaped until
//! the host asks for their text), so nothing is allocated and nothing is
//! copied. Nesting is limited to [`MAX_DEPTH`] levels so a hostile payload
//! cannot exhaust a small device's stack.

use core::fmt;

use crate::BufferTooSmall;

/// Deepest nesting of arrays and objects accepted.
pub const MAX_DEPTH: usize = 32;

/// What is wrong with a JSON document.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum JsonErrorKind {
    /// The bytes are not UTF-8.
    NotUtf8,
    /// The document ends in the middle of a value.
    UnexpectedEnd,
    /// A byte that cannot start or continue a value here.
    UnexpectedByte,
    /// Nested deeper than [`MAX_DEPTH`].
    TooDeep,
    /// An invalid escape in a string (including a lone surrogate).
    BadEscape,
    /// A number that does not follow the JSON grammar.
    BadNumber,
    /// A raw control character inside a string.
    ControlCharacter,
    /// Bytes after the document's value.
    TrailingData,
}

/// A JSON syntax error and where it is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct JsonError {
    /// What is wrong.
    pub kind: JsonErrorKind,
    /// Byte offset into the document.
    pub offset: usize,
}

impl fmt::Display for JsonError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let what = match self.kind {
            JsonErrorKind::NotUtf8 => "invalid UTF-8",
            JsonErrorKind::UnexpectedEnd => "unexpected end of input",
            JsonErrorKind::UnexpectedByte => "unexpected character",
            JsonErrorKind::TooDeep => "nesting too deep",
            JsonErrorKind::BadEscape => "invalid string escape",
            JsonErrorKind::BadNumber => "invalid number",
            JsonErrorKind::ControlCharacter => "control character in a string",
            JsonErrorKind::TrailingData => "data after the JSON value",
        };
        write!(f, "JSON {what} at byte {}", self.offset)
    }
}

impl core::error::Error for JsonError {}

/// A JSON string: either as it appeared in a document (escapes still in),
/// or plain text given by the host (escaped when written).
#[derive(Debug, Clone, Copy)]
pub struct JsonStr<'a> {
    raw: &'a str,
    escaped: bool,
}

impl<'a> JsonStr<'a> {
    /// Plain text (for example a command id the host kept as a string).
    pub const fn plain(text: &'a str) -> Self {
        Self {
            raw: text,
            escaped: false,
        }
    }

    /// The text, when it contains no escapes (ids, hex strings, codes).
    pub fn as_plain(&self) -> Option<&'a str> {
        (!self.escaped).then_some(self.raw)
    }

    /// The characters, escapes resolved.
    pub fn chars(&self) -> JsonChars<'a> {
        JsonChars {
            rest: self.raw.chars(),
            escaped: self.escaped,
        }
    }

    /// Bytes of the text once unescaped (UTF-8).
    pub fn unescaped_len(&self) -> usize {
        self.chars()
            .map(char::len_utf8)
            .fold(0, usize::saturating_add)
    }

    /// Writes the unescaped text into `buf` and returns it.
    pub fn unescape_into<'b>(&self, buf: &'b mut [u8]) -> Result<&'b str, BufferTooSmall> {
        let mut pos = 0usize;
        for c in self.chars() {
            let end = pos.checked_add(c.len_utf8()).ok_or(BufferTooSmall)?;
            let dst = buf.get_mut(pos..end).ok_or(BufferTooSmall)?;
            c.encode_utf8(dst);
            pos = end;
        }
        let text = buf.get(..pos).ok_or(BufferTooSmall)?;
        // Whole chars were encoded, so this is UTF-8.
        core::str::from_utf8(text).map_err(|_| BufferTooSmall)
    }

    /// Whether the text equals `s`.
    pub fn eq_str(&self, s: &str) -> bool {
        self.chars().eq(s.chars())
    }

    /// Whether the text is empty.
    pub fn is_empty(&self) -> bool {
        self.raw.is_empty()
    }

    /// Writes the string as JSON (with quotes).
    pub(crate) fn write_json(&self, out: &mut super::out::Out<'_>) -> Result<(), BufferTooSmall> {
        if self.escaped {
            // Already valid JSON string content: copy it as it came.
            out.byte(b'"')?;
            out.put(self.raw.as_bytes())?;
            out.byte(b'"')
        } else {
            super::out::json::string(out, self.raw)
        }
    }
}

impl PartialEq for JsonStr<'_> {
    fn eq(&self, other: &Self) -> bool {
        self.chars().eq(other.chars())
    }
}

impl fmt::Display for JsonStr<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        use fmt::Write;
        self.chars().try_for_each(|c| f.write_char(c))
    }
}

/// The characters of a [`JsonStr`].
#[derive(Debug, Clone)]
pub struct JsonChars<'a> {
    rest: core::str::Chars<'a>,
    escaped: bool,
}

impl JsonChars<'_> {
    fn hex4(&mut self) -> Option<u32> {
        let mut v = 0u32;
        for _ in 0..4 {
            v = (v << 4) | self.rest.next()?.to_digit(16)?;
        }
        Some(v)
    }
}

impl Iterator for JsonChars<'_> {
    type Item = char;

    fn next(&mut self) -> Option<char> {
        let c = self.rest.next()?;
        if !self.escaped || c != '\\' {
            return Some(c);
        }
        // The document was validated, so every escape here is well formed;
        // U+FFFD stands in should that ever not hold.
        Some(match self.rest.next() {
            Some('"') => '"',
            Some('\\') => '\\',
            Some('/') => '/',
            Some('b') => '\u{8}',
            Some('f') => '\u{c}',
            Some('n') => '\n',
            Some('r') => '\r',
            Some('t') => '\t',
            Some('u') => match self.hex4() {
                Some(hi @ 0xd800..=0xdbff) => {
                    let lo = match (self.rest.next(), self.rest.next()) {
                        (Some('\\'), Some('u')) => self.hex4(),
                        _ => None,
                    };
                    lo.filter(|lo| (0xdc00..=0xdfff).contains(lo))
                        .and_then(|lo| {
                            let cp = 0x1_0000u32
                                .checked_add((hi.checked_sub(0xd800)?) << 10)?
                                .checked_add(lo.checked_sub(0xdc00)?)?;
                            char::from_u32(cp)
                        })
                        .unwrap_or(char::REPLACEMENT_CHARACTER)
                }
                Some(cp) => char::from_u32(cp).unwrap_or(char::REPLACEMENT_CHARACTER),
                None => char::REPLACEMENT_CHARACTER,
            },
            _ => char::REPLACEMENT_CHARACTER,
        })
    }
}

/// A JSON number, kept as written.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct JsonNumber<'a>(&'a str);

impl<'a> JsonNumber<'a> {
    /// The number as written.
    pub fn as_str(&self) -> &'a str {
        self.0
    }

    /// The value, if it is a non-negative integer that fits a `u64`
    /// (written without fraction or exponent).
    pub fn as_u64(&self) -> Option<u64> {
        self.0.parse().ok()
    }

    /// The value, if it is an integer that fits an `i64`.
    pub fn as_i64(&self) -> Option<i64> {
        self.0.parse().ok()
    }

    /// The value as the nearest `f64` (finite: JSON has no NaN or infinity,
    /// but a huge exponent would overflow, and then this is `None`).
    pub fn as_f64(&self) -> Option<f64> {
        self.0.parse::<f64>().ok().filter(|v| v.is_finite())
    }
}

/// A JSON object, validated; its fields are read on demand.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct JsonObject<'a>(&'a str);

impl<'a> JsonObject<'a> {
    /// The empty object.
    pub const EMPTY: JsonObject<'static> = JsonObject("{}");

    /// The object's JSON text exactly as received (to forward it).
    pub fn as_str(&self) -> &'a str {
        self.0
    }

    /// The fields, in document order.
    pub fn iter(&self) -> Fields<'a> {
        let mut lex = Lexer::new(self.0);
        // Step over the opening brace (validated to be there).
        lex.pos = 1;
        Fields {
            lex,
            first: true,
            done: false,
        }
    }

    /// Whether it has no fields.
    pub fn is_empty(&self) -> bool {
        self.iter().next().is_none()
    }

    /// The first field named `key`.
    pub fn get(&self, key: &str) -> Option<JsonValue<'a>> {
        self.iter().find(|(k, _)| k.eq_str(key)).map(|(_, v)| v)
    }
}

/// A JSON array, validated; its elements are read on demand.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct JsonArray<'a>(&'a str);

impl<'a> JsonArray<'a> {
    /// The array's JSON text exactly as received.
    pub fn as_str(&self) -> &'a str {
        self.0
    }

    /// The elements, in order.
    pub fn iter(&self) -> Elements<'a> {
        let mut lex = Lexer::new(self.0);
        lex.pos = 1;
        Elements {
            lex,
            first: true,
            done: false,
        }
    }
}

/// A JSON value borrowed from a validated document.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum JsonValue<'a> {
    /// `null`.
    Null,
    /// `true` or `false`.
    Bool(bool),
    /// A number.
    Number(JsonNumber<'a>),
    /// A string.
    Str(JsonStr<'a>),
    /// An array.
    Array(JsonArray<'a>),
    /// An object.
    Object(JsonObject<'a>),
}

/// Fields of a [`JsonObject`].
#[derive(Debug, Clone)]
pub struct Fields<'a> {
    lex: Lexer<'a>,
    first: bool,
    done: bool,
}

impl<'a> Iterator for Fields<'a> {
    type Item = (JsonStr<'a>, JsonValue<'a>);

    fn next(&mut self) -> Option<Self::Item> {
        if self.done {
            return None;
        }
        // The object was validated when parsed, so errors cannot occur here;
        // should one, iteration ends.
        let item = (|| -> Result<Option<Self::Item>, JsonError> {
            self.lex.ws();
            if self.lex.peek() == Some(b'}') {
                return Ok(None);
            }
            if !self.first {
                self.lex.expect(b',')?;
                self.lex.ws();
            }
            self.first = false;
            let key = self.lex.string()?;
            self.lex.ws();
            self.lex.expect(b':')?;
            let value = self.lex.value(0)?;
            Ok(Some((key, value)))
        })();
        match item {
            Ok(Some(kv)) => Some(kv),
            _ => {
                self.done = true;
                None
            }
        }
    }
}

/// Elements of a [`JsonArray`].
#[derive(Debug, Clone)]
pub struct Elements<'a> {
    lex: Lexer<'a>,
    first: bool,
    done: bool,
}

impl<'a> Iterator for Elements<'a> {
    type Item = JsonValue<'a>;

    fn next(&mut self) -> Option<Self::Item> {
        if self.done {
            return None;
        }
        let item = (|| -> Result<Option<Self::Item>, JsonError> {
            self.lex.ws();
            if self.lex.peek() == Some(b']') {
                return Ok(None);
            }
            if !self.first {
                self.lex.expect(b',')?;
            }
            self.first = false;
            Ok(Some(self.lex.value(0)?))
        })();
        match item {
            Ok(Some(v)) => Some(v),
            _ => {
                self.done = true;
                None
            }
        }
    }
}

/// Parses and validates a whole JSON document.
pub fn parse(bytes: &[u8]) -> Result<JsonValue<'_>, JsonError> {
    let text = core::str::from_utf8(bytes).map_err(|e| JsonError {
        kind: JsonErrorKind::NotUtf8,
        offset: e.valid_up_to(),
    })?;
    let mut lex = Lexer::new(text);
    let value = lex.value(0)?;
    lex.ws();
    if lex.pos < text.len() {
        return Err(lex.err(JsonErrorKind::TrailingData));
    }
    Ok(value)
}

#[derive(Debug, Clone)]
struct Lexer<'a> {
    text: &'a str,
    pos: usize,
}

impl<'a> Lexer<'a> {
    fn new(text: &'a str) -> Self {
        Self { text, pos: 0 }
    }

    fn err(&self, kind: JsonErrorKind) -> JsonError {
        JsonError {
            kind,
            offset: self.pos,
        }
    }

    fn peek(&self) -> Option<u8> {
        self.text.as_bytes().get(self.pos).copied()
    }

    fn bump(&mut self) {
        self.pos = self.pos.saturating_add(1);
    }

    fn ws(&mut self) {
        while matches!(self.peek(), Some(b' ' | b'\t' | b'\n' | b'\r')) {
            self.bump();
        }
    }

    fn expect(&mut self, b: u8) -> Result<(), JsonError> {
        match self.peek() {
            Some(c) if c == b => {
                self.bump();
                Ok(())
            }
            Some(_) => Err(self.err(JsonErrorKind::UnexpectedByte)),
            None => Err(self.err(JsonErrorKind::UnexpectedEnd)),
        }
    }

    fn slice(&self, start: usize) -> Result<&'a str, JsonError> {
        self.text
            .get(start..self.pos)
            .ok_or(self.err(JsonErrorKind::UnexpectedByte))
    }

    fn value(&mut self, depth: usize) -> Result<JsonValue<'a>, JsonError> {
        self.ws();
        match self.peek() {
            None => Err(self.err(JsonErrorKind::UnexpectedEnd)),
            Some(b'{') => self
                .container(depth, b'}')
                .map(|s| JsonValue::Object(JsonObject(s))),
            Some(b'[') => self
                .container(depth, b']')
                .map(|s| JsonValue::Array(JsonArray(s))),
            Some(b'"') => self.string().map(JsonValue::Str),
            Some(b't') => self.literal("true").map(|()| JsonValue::Bool(true)),
            Some(b'f') => self.literal("false").map(|()| JsonValue::Bool(false)),
            Some(b'n') => self.literal("null").map(|()| JsonValue::Null),
            Some(b'-' | b'0'..=b'9') => self.number().map(JsonValue::Number),
            Some(_) => Err(self.err(JsonErrorKind::UnexpectedByte)),
        }
    }

    fn literal(&mut self, word: &str) -> Result<(), JsonError> {
        let end = self.pos.saturating_add(word.len());
        match self.text.get(self.pos..end) {
            Some(w) if w == word => {
                self.pos = end;
                Ok(())
            }
            Some(_) => Err(self.err(JsonErrorKind::UnexpectedByte)),
            None => Err(self.err(JsonErrorKind::UnexpectedEnd)),
        }
    }

    /// An object or array, validated; returns its text including brackets.
    fn container(&mut self, depth: usize, close: u8) -> Result<&'a str, JsonError> {
        if depth >= MAX_DEPTH {
            return Err(self.err(JsonErrorKind::TooDeep));
        }
        let inner = depth.saturating_add(1);
        let start = self.pos;
        self.bump();
        self.ws();
        if self.peek() == Some(close) {
            self.bump();
            return self.slice(start);
        }
        loop {
            if close == b'}' {
                self.ws();
                if self.peek() != Some(b'"') {
                    return Err(self.err(match self.peek() {
                        None => JsonErrorKind::UnexpectedEnd,
                        Some(_) => JsonErrorKind::UnexpectedByte,
                    }));
                }
                self.string()?;
                self.ws();
                self.expect(b':')?;
            }
            self.value(inner)?;
            self.ws();
            match self.peek() {
                Some(b',') => self.bump(),
                Some(c) if c == close => {
                    self.bump();
                    return self.slice(start);
                }
                Some(_) => return Err(self.err(JsonErrorKind::UnexpectedByte)),
                None => return Err(self.err(JsonErrorKind::UnexpectedEnd)),
            }
        }
    }

    fn hex4(&mut self) -> Result<u32, JsonError> {
        let mut v = 0u32;
        for _ in 0..4 {
            let d = self
                .peek()
                .and_then(|b| char::from(b).to_digit(16))
                .ok_or(self.err(JsonErrorKind::BadEscape))?;
            v = (v << 4) | d;
            self.bump();
        }
        Ok(v)
    }

    /// A string starting at the opening quote; returns its content.
    fn string(&mut self) -> Result<JsonStr<'a>, JsonError> {
        self.expect(b'"')?;
        let start = self.pos;
        let mut escaped = false;
        loop {
            match self.peek() {
                None => return Err(self.err(JsonErrorKind::UnexpectedEnd)),
                Some(b'"') => {
                    let raw = self.slice(start)?;
                    self.bump();
                    return Ok(JsonStr { raw, escaped });
                }
                Some(b'\\') => {
                    escaped = true;
                    self.bump();
                    match self.peek() {
                        Some(b'"' | b'\\' | b'/' | b'b' | b'f' | b'n' | b'r' | b't') => self.bump(),
                        Some(b'u') => {
                            self.bump();
                            let cp = self.hex4()?;
                            if (0xdc00..=0xdfff).contains(&cp) {
                                return Err(self.err(JsonErrorKind::BadEscape));
                            }
                            if (0xd800..=0xdbff).contains(&cp) {
                                // A high surrogate must be followed by a low one.
                                self.expect(b'\\')
                                    .map_err(|_| self.err(JsonErrorKind::BadEscape))?;
                                self.expect(b'u')
                                    .map_err(|_| self.err(JsonErrorKind::BadEscape))?;
                                let lo = self.hex4()?;
                                if !(0xdc00..=0xdfff).contains(&lo) {
                                    return Err(self.err(JsonErrorKind::BadEscape));
                                }
                            }
                        }
                        None => return Err(self.err(JsonErrorKind::UnexpectedEnd)),
                        Some(_) => return Err(self.err(JsonErrorKind::BadEscape)),
                    }
                }
                Some(0x00..=0x1f) => return Err(self.err(JsonErrorKind::ControlCharacter)),
                Some(_) => self.bump(),
            }
        }
    }

    fn digits(&mut self) -> usize {
        let start = self.pos;
        while matches!(self.peek(), Some(b'0'..=b'9')) {
            self.bump();
        }
        self.pos.saturating_sub(start)
    }

    /// `-?(0|[1-9][0-9]*)(\.[0-9]+)?([eE][+-]?[0-9]+)?`
    fn number(&mut self) -> Result<JsonNumber<'a>, JsonError> {
        let start = self.pos;
        if self.peek() == Some(b'-') {
            self.bump();
        }
        match self.peek() {
            Some(b'0') => self.bump(),
            Some(b'1'..=b'9') => {
                self.digits();
            }
            _ => return Err(self.err(JsonErrorKind::BadNumber)),
        }
        if self.peek() == Some(b'.') {
            self.bump();
            if self.digits() == 0 {
                return Err(self.err(JsonErrorKind::BadNumber));
            }
        }
        if matches!(self.peek(), Some(b'e' | b'E')) {
            self.bump();
            if matches!(self.peek(), Some(b'+' | b'-')) {
                self.bump();
            }
            if self.digits() == 0 {
                return Err(self.err(JsonErrorKind::BadNumber));
            }
        }
        Ok(JsonNumber(self.slice(start)?))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;
    use std::string::String;
    use std::vec::Vec;

    fn kind(doc: &str) -> JsonErrorKind {
        parse(doc.as_bytes()).expect_err(doc).kind
    }

    #[test]
    fn reads_values_and_fields() {
        let doc =
            br#" {"a": [1, -2.5e3, true, null], "b": {"c": "x\ny\u00e9\ud83d\ude00"}, "n": 0} "#;
        let JsonValue::Object(o) = parse(doc).expect("valid") else {
            panic!("object")
        };
        let keys: Vec<String> = o.iter().map(|(k, _)| k.chars().collect()).collect();
        assert_eq!(keys, ["a", "b", "n"]);
        let Some(JsonValue::Array(a)) = o.get("a") else {
            panic!("array")
        };
        let items: Vec<JsonValue<'_>> = a.iter().collect();
        assert_eq!(items.len(), 4);
        assert_eq!(items[0], JsonValue::Number(JsonNumber("1")));
        assert_eq!(items[1], JsonValue::Number(JsonNumber("-2.5e3")));
        assert_eq!(items[2], JsonValue::Bool(true));
        assert_eq!(items[3], JsonValue::Null);
        let Some(JsonValue::Object(b)) = o.get("b") else {
            panic!("object")
        };
        let Some(JsonValue::Str(c)) = b.get("c") else {
            panic!("string")
        };
        assert!(c.eq_str("x\nyé😀"));
        assert_eq!(c.as_plain(), None);
        let mut buf = [0u8; 16];
        assert_eq!(c.unescape_into(&mut buf), Ok("x\nyé😀"));
        assert_eq!(c.unescaped_len(), 9);
        assert_eq!(c.unescape_into(&mut [0u8; 4]), Err(BufferTooSmall));
        assert_eq!(
            o.get("n").and_then(|v| match v {
                JsonValue::Number(n) => n.as_u64(),
                _ => None,
            }),
            Some(0)
        );
        assert!(o.get("zz").is_none());
        assert!(JsonObject::EMPTY.is_empty());
    }

    #[test]
    fn numbers_convert_only_when_exact() {
        let n = |s| JsonNumber(s);
        assert_eq!(n("18446744073709551615").as_u64(), Some(u64::MAX));
        assert_eq!(n("18446744073709551616").as_u64(), None);
        assert_eq!(n("-1").as_u64(), None);
        assert_eq!(n("-1").as_i64(), Some(-1));
        assert_eq!(n("1.0").as_u64(), None);
        assert_eq!(n("1e2").as_u64(), None);
        assert_eq!(n("1e999").as_f64(), None);
        assert_eq!(n("2.5").as_f64(), Some(2.5));
    }

    #[test]
    fn refuses_malformed_documents() {
        assert_eq!(kind(""), JsonErrorKind::UnexpectedEnd);
        assert_eq!(kind("{"), JsonErrorKind::UnexpectedEnd);
        assert_eq!(kind("{\"a\" 1}"), JsonErrorKind::UnexpectedByte);
        assert_eq!(kind("{\"a\":1,}"), JsonErrorKind::UnexpectedByte);
        assert_eq!(kind("[1,]"), JsonErrorKind::UnexpectedByte);
        assert_eq!(kind("{a:1}"), JsonErrorKind::UnexpectedByte);
        assert_eq!(kind("01"), JsonErrorKind::TrailingData);
        assert_eq!(kind("1."), JsonErrorKind::BadNumber);
        assert_eq!(kind("-"), JsonErrorKind::BadNumber);
        assert_eq!(kind("1e+"), JsonErrorKind::BadNumber);
        assert_eq!(kind("NaN"), JsonErrorKind::UnexpectedByte);
        assert_eq!(kind("tru"), JsonErrorKind::UnexpectedEnd);
        assert_eq!(kind("\"a\\x\""), JsonErrorKind::BadEscape);
        assert_eq!(kind("\"\\ud800\""), JsonErrorKind::BadEscape);
        assert_eq!(kind("\"\\udc00\""), JsonErrorKind::BadEscape);
        assert_eq!(kind("\"\\u12g4\""), JsonErrorKind::BadEscape);
        assert_eq!(kind("\"a\u{1}\""), JsonErrorKind::ControlCharacter);
        assert_eq!(kind("{} {}"), JsonErrorKind::TrailingData);
        assert_eq!(
            parse(b"\"\xff\"").expect_err("utf8").kind,
            JsonErrorKind::NotUtf8
        );
        let deep = "[".repeat(MAX_DEPTH + 1) + &"]".repeat(MAX_DEPTH + 1);
        assert_eq!(kind(&deep), JsonErrorKind::TooDeep);
        let ok = "[".repeat(MAX_DEPTH) + &"]".repeat(MAX_DEPTH);
        assert!(parse(ok.as_bytes()).is_ok());
        let e = parse(b"[1,]").expect_err("trailing comma");
        assert_eq!(e.offset, 3);
        assert_eq!(std::format!("{e}"), "JSON unexpected character at byte 3");
    }

    proptest! {
        #[test]
        fn random_bytes_never_panic(bytes in prop::collection::vec(any::<u8>(), 0..200)) {
            if let Ok(v) = parse(&bytes) {
                walk(v);
            }
        }

        #[test]
        fn json_like_text_never_panics(s in r#"[\[\]{}",:0-9a-z\\ .eE+-]{0,60}"#) {
            if let Ok(v) = parse(s.as_bytes()) {
                walk(v);
            }
        }
    }

    /// Visits every value: iteration over a validated document must not fail.
    fn walk(v: JsonValue<'_>) {
        match v {
            JsonValue::Object(o) => {
                for (k, v) in o.iter() {
                    let _ = k.chars().count();
                    walk(v);
                }
            }
            JsonValue::Array(a) => a.iter().for_each(|v| walk(v)),
            JsonValue::Str(s) => {
                let _ = s.chars().count();
            }
            _ => {}
        }
    }
}
