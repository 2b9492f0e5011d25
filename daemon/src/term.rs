//! Text from guests (log lines, attr names, error messages) shown on an
//! operator's terminal: C0 and C1 control characters and DEL are written as
//! visible escapes, so a build cannot move the cursor, clear the screen,
//! rewrite earlier lines with CR, set the window title or smuggle OSC 52
//! clipboard writes through `airlockctl`.

use std::borrow::Cow;
use std::fmt::Write as _;

/// C0 (but tab), DEL and C1 (U+0080..=U+009F).
fn is_unsafe(c: char) -> bool {
    c.is_control() && c != '\t'
}

/// `s` with every control character but tab written as `\xNN` or
/// `\u{NNNN}`; unchanged (borrowed) when it has none.
pub fn escape(s: &str) -> Cow<'_, str> {
    if !s.chars().any(is_unsafe) {
        return Cow::Borrowed(s);
    }
    let mut out = String::with_capacity(s.len() + 8);
    for c in s.chars() {
        if !is_unsafe(c) {
            out.push(c);
        } else if (c as u32) < 0x80 {
            let _ = write!(out, "\\x{:02x}", c as u32);
        } else {
            let _ = write!(out, "\\u{{{:04x}}}", c as u32);
        }
    }
    Cow::Owned(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn control_characters_become_visible() {
        assert!(matches!(escape("plain text ✓"), Cow::Borrowed(_)));
        assert_eq!(escape("\x1b[2Jclear"), "\\x1b[2Jclear");
        assert_eq!(escape("ok\rFAKE"), "ok\\x0dFAKE");
        assert_eq!(escape("a\nb\tc\x7f"), "a\\x0ab\tc\\x7f");
        assert_eq!(escape("\u{9b}31m"), "\\u{009b}31m");
        assert_eq!(escape("\x1b]52;c;ZXZpbA==\x07"), "\\x1b]52;c;ZXZpbA==\\x07");
        for s in ["\x1b[2J", "\r", "\u{9d}0;title\u{9c}"] {
            assert!(!escape(s).chars().any(char::is_control));
        }
    }
}
