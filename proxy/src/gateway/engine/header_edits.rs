//! The changes a filter chain makes to a header block, in order: kept as names made once
//! ([`EditName`]) and value bytes side by side in one buffer, so that making an edit copies a
//! few bytes and a request's edits are let go by resetting two lengths — no allocation, no
//! reference count and no destructor per edit once the buffers are warm.

use std::collections::HashMap;
use std::fmt;
use std::sync::{LazyLock, Mutex, PoisonError};

use http::{HeaderName, HeaderValue};

/// A header name an edit can carry: a `'static` one with its text beside it, copied freely.
/// Filters make theirs at load ([`EditName::intern`]) or as constants ([`edit_name!`]).
#[derive(Clone, Copy, Eq)]
pub(crate) struct EditName {
    header: &'static HeaderName,
    /// `header.as_str()`, kept: a standard name's text is otherwise a table lookup.
    text: &'static str,
}

/// An [`EditName`] constant: `const X: EditName = edit_name!("x-name");` (lower case; a bad
/// name fails the build).
macro_rules! edit_name {
    ($text:literal) => {{
        static NAME: http::HeaderName = http::HeaderName::from_static($text);
        $crate::gateway::engine::filters::EditName::paired(&NAME, $text)
    }};
}
pub(crate) use edit_name;

/// Every name interned so far: one copy each, kept for the process's life. Only names from
/// the configuration and the gateway's own are interned (never one a client or upstream
/// sent), so the table is bounded by the distinct names ever configured.
static INTERNED: LazyLock<Mutex<HashMap<HeaderName, EditName>>> =
    LazyLock::new(|| Mutex::new(HashMap::new()));

impl EditName {
    /// `header` with its text: for [`edit_name!`], which makes the two from one literal.
    #[doc(hidden)]
    pub(crate) const fn paired(header: &'static HeaderName, text: &'static str) -> Self {
        Self { header, text }
    }

    /// The process's one copy of `name` (made on first use; at load, not per request). Its
    /// bytes are static, so the copies the pingora path puts in its header maps are no
    /// reference counts either.
    pub(crate) fn intern(name: &HeaderName) -> Self {
        let mut table = INTERNED.lock().unwrap_or_else(PoisonError::into_inner);
        if let Some(interned) = table.get(name) {
            return *interned;
        }
        let text: &'static str = Box::leak(name.as_str().into());
        // The text is a `HeaderName`'s own (lower case, valid): `from_static` accepts it.
        let header: &'static HeaderName = Box::leak(Box::new(HeaderName::from_static(text)));
        let interned = Self {
            header,
            text: header.as_str(),
        };
        table.insert(name.clone(), interned);
        interned
    }

    pub(crate) fn header(self) -> &'static HeaderName {
        self.header
    }

    pub(crate) fn as_str(self) -> &'static str {
        self.text
    }
}

impl fmt::Debug for EditName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Whether `bytes` may be a field value: what `http::HeaderValue` accepts (visible ASCII,
/// space, tab and obs-text; no control byte, so no CR or LF). Eight bytes at a time (the last
/// few padded with spaces): a word with no byte below 0x20 and none 0x7f is valid as it is;
/// only a word with one (a tab, or a bad byte) is looked at byte by byte.
pub(crate) fn is_field_value(bytes: &[u8]) -> bool {
    let mut words = bytes.chunks_exact(8);
    for word in &mut words {
        let mut eight = [0u8; 8];
        eight.copy_from_slice(word);
        if !word_is_field_value(eight) {
            return false;
        }
    }
    let rest = words.remainder();
    let mut last = [b' '; 8];
    last[..rest.len()].copy_from_slice(rest);
    word_is_field_value(last)
}

fn word_is_field_value(eight: [u8; 8]) -> bool {
    const ONES: u64 = u64::from_ne_bytes([0x01; 8]);
    const HIGHS: u64 = u64::from_ne_bytes([0x80; 8]);
    let w = u64::from_ne_bytes(eight);
    // The classic "has a byte less than n" and "has a zero byte" tests: exact as to whether
    // any byte is flagged (a false alarm only comes beside a true one).
    let below_space = w.wrapping_sub(ONES * 0x20) & !w & HIGHS;
    let del = w ^ (ONES * 0x7f);
    let is_del = del.wrapping_sub(ONES) & !del & HIGHS;
    (below_space | is_del) == 0
        || eight
            .iter()
            .all(|&b| (b >= 0x20 && b != 0x7f) || b == b'\t')
}

/// Bytes that are a field value: a `HeaderValue`'s, or checked once ([`FieldValue::new`]) and
/// then given to as many edits as need them.
#[derive(Debug, Clone, Copy)]
pub(crate) struct FieldValue<'a>(&'a [u8]);

impl<'a> FieldValue<'a> {
    /// `None` when `bytes` cannot be a field value.
    pub(crate) fn new(bytes: &'a [u8]) -> Option<Self> {
        is_field_value(bytes).then_some(Self(bytes))
    }
}

impl<'a> From<&'a HeaderValue> for FieldValue<'a> {
    fn from(value: &'a HeaderValue) -> Self {
        Self(value.as_bytes())
    }
}

/// Changes to a header block, in order.
#[derive(Debug, Default)]
pub(crate) struct HeaderEdits {
    edits: Vec<Edit>,
    /// The values of every edit, back to back.
    values: Vec<u8>,
    /// Bit `len % 64` is set for the name length of every edit that replaces or removes
    /// fields: most field lines are told apart by their name's length alone.
    replaced_lengths: u64,
    /// The same for every edit's name.
    named_lengths: u64,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Op {
    Set,
    Add,
    Remove,
}

/// One edit: its value is `values[start..end]` (empty for a removal).
#[derive(Debug, Clone, Copy)]
struct Edit {
    op: Op,
    /// A later edit sets or removes the same name: this one adds nothing to the block.
    shadowed: bool,
    name: EditName,
    start: usize,
    end: usize,
}

/// One change to a header block, as read back.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum EditRef<'a> {
    /// Replaces every field of this name.
    Set(EditName, &'a [u8]),
    /// Adds a field beside those of the name.
    Add(EditName, &'a [u8]),
    /// Removes every field of this name.
    Remove(EditName),
}

impl HeaderEdits {
    /// Room for the edits a chain usually makes, taken at the first one (a request without
    /// edits allocates nothing).
    const FIRST_ROOM: usize = 8;
    const FIRST_VALUE_ROOM: usize = 256;

    /// Replaces every field `name` with `value`.
    pub(crate) fn set<'v>(&mut self, name: EditName, value: impl Into<FieldValue<'v>>) {
        self.push(Op::Set, name, value.into().0);
    }

    /// Adds a field `name: value` beside those there.
    pub(crate) fn add<'v>(&mut self, name: EditName, value: impl Into<FieldValue<'v>>) {
        self.push(Op::Add, name, value.into().0);
    }

    /// Removes every field `name`.
    pub(crate) fn remove(&mut self, name: EditName) {
        self.push(Op::Remove, name, b"");
    }

    /// [`HeaderEdits::set`] with value bytes; `false`, and no edit, when they cannot be a
    /// field value.
    pub(crate) fn set_text(&mut self, name: EditName, value: &[u8]) -> bool {
        FieldValue::new(value)
            .map(|value| self.set(name, value))
            .is_some()
    }

    /// [`HeaderEdits::add`] with value bytes; `false`, and no edit, when they cannot be a
    /// field value.
    pub(crate) fn add_text(&mut self, name: EditName, value: &[u8]) -> bool {
        FieldValue::new(value)
            .map(|value| self.add(name, value))
            .is_some()
    }

    /// [`HeaderEdits::set_text`] with a value `write` appends to the buffer given it (written
    /// in place: no copy of its own).
    pub(crate) fn set_with(&mut self, name: EditName, write: impl FnOnce(&mut Vec<u8>)) -> bool {
        self.push_with(Op::Set, name, write)
    }

    /// [`HeaderEdits::add_text`] with a value `write` appends to the buffer given it.
    pub(crate) fn add_with(&mut self, name: EditName, write: impl FnOnce(&mut Vec<u8>)) -> bool {
        self.push_with(Op::Add, name, write)
    }

    fn push_with(&mut self, op: Op, name: EditName, write: impl FnOnce(&mut Vec<u8>)) -> bool {
        self.make_room();
        let start = self.values.len();
        write(&mut self.values);
        if !is_field_value(&self.values[start..]) {
            self.values.truncate(start);
            return false;
        }
        let end = self.values.len();
        self.record(op, name, start, end);
        true
    }

    fn push(&mut self, op: Op, name: EditName, value: &[u8]) {
        self.make_room();
        let start = self.values.len();
        self.values.extend_from_slice(value);
        let end = self.values.len();
        self.record(op, name, start, end);
    }

    fn make_room(&mut self) {
        if self.edits.capacity() == 0 {
            self.edits.reserve(Self::FIRST_ROOM);
            self.values.reserve(Self::FIRST_VALUE_ROOM);
        }
    }

    /// Records an edit whose value is `values[start..end]`; a set or removal shadows the
    /// earlier edits of its name (looked for only when an earlier name had its length).
    fn record(&mut self, op: Op, name: EditName, start: usize, end: usize) {
        let bit = length_bit(name.as_str().len());
        if op != Op::Add {
            if self.named_lengths & bit != 0 {
                for earlier in self.edits.iter_mut().filter(|e| e.name == name) {
                    earlier.shadowed = true;
                }
            }
            self.replaced_lengths |= bit;
        }
        self.named_lengths |= bit;
        self.edits.push(Edit {
            op,
            shadowed: false,
            name,
            start,
            end,
        });
    }

    /// `other`'s edits after these.
    pub(crate) fn extend(&mut self, other: HeaderEdits) {
        if self.edits.is_empty() {
            *self = other;
            return;
        }
        let base = self.values.len();
        self.values.extend_from_slice(&other.values);
        for edit in &other.edits {
            self.record(edit.op, edit.name, edit.start + base, edit.end + base);
        }
    }

    pub(crate) fn is_empty(&self) -> bool {
        self.edits.is_empty()
    }

    /// No edits, the room for them kept.
    pub(crate) fn clear(&mut self) {
        self.edits.clear();
        self.values.clear();
        self.replaced_lengths = 0;
        self.named_lengths = 0;
    }

    /// How many edits fit before the list grows.
    #[cfg(test)]
    pub(crate) fn room(&self) -> usize {
        self.edits.capacity()
    }

    /// How many edits there are.
    pub(crate) fn len(&self) -> usize {
        self.edits.len()
    }

    pub(crate) fn iter(&self) -> impl Iterator<Item = EditRef<'_>> {
        self.edits.iter().map(|edit| self.read(edit))
    }

    fn read(&self, edit: &Edit) -> EditRef<'_> {
        let value = self.values.get(edit.start..edit.end).unwrap_or_default();
        match edit.op {
            Op::Set => EditRef::Set(edit.name, value),
            Op::Add => EditRef::Add(edit.name, value),
            Op::Remove => EditRef::Remove(edit.name),
        }
    }

    /// Whether the original fields named `name` (any case) are not to be forwarded (set or
    /// removed).
    pub(crate) fn replaces(&self, name: &str) -> bool {
        self.replaces_bytes(name.as_bytes())
    }

    /// [`HeaderEdits::replaces`] on a field name as it came off the wire.
    pub(crate) fn replaces_bytes(&self, name: &[u8]) -> bool {
        if self.replaced_lengths & length_bit(name.len()) == 0 {
            return false;
        }
        self.edits.iter().any(|e| {
            // Edit names are lower case (`HeaderName`); a length check first spares most
            // comparisons.
            let n = e.name.as_str();
            e.op != Op::Add && n.len() == name.len() && n.as_bytes().eq_ignore_ascii_case(name)
        })
    }

    /// The fields the edits add, as they go out: a set field once, added ones each, a
    /// removal dropping what came before it (marked as the edits were made: nothing scanned).
    pub(crate) fn added(&self) -> impl Iterator<Item = (EditName, &[u8])> {
        self.edits
            .iter()
            .filter(|edit| edit.op != Op::Remove && !edit.shadowed)
            .map(|edit| {
                let value = self.values.get(edit.start..edit.end).unwrap_or_default();
                (edit.name, value)
            })
    }
}

impl PartialEq for EditName {
    fn eq(&self, other: &Self) -> bool {
        // One copy per interned name, so the address mostly decides; a constant and an
        // interned copy of the same name compare by text (lengths first).
        std::ptr::eq(self.text, other.text)
            || (self.text.len() == other.text.len() && self.text == other.text)
    }
}

/// The bit of [`HeaderEdits::replaced_lengths`] for a name of `len` bytes.
fn length_bit(len: usize) -> u64 {
    1 << (len % 64)
}

#[cfg(test)]
mod tests {
    use super::*;

    const X_A: EditName = edit_name!("x-a");

    #[test]
    fn edits_in_order() {
        let name = X_A;
        let mut edits = HeaderEdits::default();
        edits.add(name, &HeaderValue::from_static("1"));
        edits.set(name, &HeaderValue::from_static("2"));
        assert!(edits.add_text(name, b"3"));
        edits.remove(EditName::intern(&HeaderName::from_static("x-gone")));
        assert!(edits.replaces("X-A") && edits.replaces("x-gone") && !edits.replaces("x-b"));
        let added: Vec<_> = edits.added().map(|(_, v)| v).collect();
        assert_eq!(added, [&b"2"[..], b"3"]);
        assert_eq!(edits.len(), 4);
    }

    #[test]
    fn values_are_checked_and_a_refused_one_leaves_nothing() {
        let name = X_A;
        let mut edits = HeaderEdits::default();
        assert!(!edits.set_text(name, b"a\r\nx-injected: 1"));
        assert!(!edits.set_with(name, |out| out.extend_from_slice(b"nul\0")));
        assert!(edits.is_empty() && !edits.replaces("x-a"));
        assert!(edits.set_with(name, |out| out.extend_from_slice(b"caf\xc3\xa9\ttab")));
        assert_eq!(
            edits.iter().collect::<Vec<_>>(),
            [EditRef::Set(name, b"caf\xc3\xa9\ttab")]
        );
        // Every byte at every place of a value with whole words and a remainder, beside
        // valid bytes of every kind (space, tab, obs-text): as `HeaderValue` decides.
        for byte in 0..=255u8 {
            for at in 0..19 {
                let mut value = *b"a b\tc\xff~0123456789Zz";
                value[at] = byte;
                let http_says = HeaderValue::from_bytes(&value).is_ok();
                assert_eq!(is_field_value(&value), http_says, "{byte:#x} at {at}");
            }
        }
    }

    #[test]
    fn interned_names_are_one_copy_and_extend_keeps_values() {
        let a = EditName::intern(&HeaderName::from_static("x-interned"));
        let b = EditName::intern(&HeaderName::from_bytes(b"X-Interned").unwrap());
        assert!(std::ptr::eq(a.header(), b.header()));
        assert_eq!(
            EditName::intern(&http::header::VARY).header(),
            &http::header::VARY
        );

        let mut first = HeaderEdits::default();
        first.set(a, &HeaderValue::from_static("one"));
        let mut second = HeaderEdits::default();
        second.add(X_A, &HeaderValue::from_static("two"));
        second.remove(a);
        first.extend(second);
        assert_eq!(
            first.iter().collect::<Vec<_>>(),
            [
                EditRef::Set(a, b"one"),
                EditRef::Add(X_A, b"two"),
                EditRef::Remove(a)
            ]
        );
        assert_eq!(first.added().count(), 1, "the set is removed after");
    }
}
