//! Input normalisation and shell-like tokenising of a slash command's text.
//!
//! Pure: no I/O. Students type on Japanese IMEs and phones, so full-width
//! letters/digits/spaces, smart quotes and "--" auto-corrected into long
//! dashes are folded back to ASCII before anything else looks at the text.

use crate::messages::UserError;

/// Fold full-width ASCII (U+FF01..U+FF5E), the ideographic space, smart
/// quotes and long dashes into their ASCII counterparts.
pub fn normalize(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for c in text.chars() {
        let code = c as u32;
        let mapped = match c {
            '\u{3000}' | '\u{00A0}' | '\u{2002}'..='\u{200A}' => ' ',
            '\u{201C}' | '\u{201D}' | '\u{201E}' | '\u{FF02}' => '"',
            '\u{2018}' | '\u{2019}' | '\u{FF07}' => '\'',
            _ if (0xFF01..=0xFF5E).contains(&code) => char::from_u32(code - 0xFEE0).unwrap_or(c),
            _ => c,
        };
        out.push(mapped);
    }
    // Long dashes only mean "--" where a flag may start: at the start of a word.
    let mut fixed = String::with_capacity(out.len());
    let mut at_word_start = true;
    let mut in_dash_run = false;
    for c in out.chars() {
        let long = matches!(c, '\u{2014}' | '\u{2013}' | '\u{2015}' | '\u{2212}');
        if at_word_start && long {
            fixed.push_str("--");
            in_dash_run = true;
            at_word_start = false;
            continue;
        }
        if in_dash_run && (long || c == '-') {
            continue; // "——" or "—-" typed for "--": still one "--"
        }
        in_dash_run = false;
        at_word_start = c.is_whitespace();
        fixed.push(c);
    }
    fixed
}

/// Split into words the way a POSIX shell would for quoting purposes only:
/// double quotes, single quotes and backslash escapes. Nothing is expanded.
pub fn tokenize(text: &str) -> Result<Vec<String>, UserError> {
    let mut words = Vec::new();
    let mut cur = String::new();
    let mut in_word = false;
    let mut chars = text.chars();
    while let Some(c) = chars.next() {
        match c {
            c if c.is_whitespace() => {
                if in_word {
                    words.push(std::mem::take(&mut cur));
                    in_word = false;
                }
            }
            '"' => {
                in_word = true;
                loop {
                    match chars.next() {
                        None => {
                            return Err(UserError::new("grammar.unclosed_quote").arg("quote", "\""))
                        }
                        Some('"') => break,
                        Some('\\') => match chars.next() {
                            Some(n @ ('"' | '\\')) => cur.push(n),
                            Some(n) => {
                                cur.push('\\');
                                cur.push(n)
                            }
                            None => {
                                return Err(
                                    UserError::new("grammar.unclosed_quote").arg("quote", "\"")
                                )
                            }
                        },
                        Some(n) => cur.push(n),
                    }
                }
            }
            '\'' => {
                in_word = true;
                loop {
                    match chars.next() {
                        None => {
                            return Err(UserError::new("grammar.unclosed_quote").arg("quote", "'"))
                        }
                        Some('\'') => break,
                        Some(n) => cur.push(n),
                    }
                }
            }
            '\\' => {
                in_word = true;
                match chars.next() {
                    Some(n) => cur.push(n),
                    None => cur.push('\\'),
                }
            }
            c => {
                in_word = true;
                cur.push(c);
            }
        }
    }
    if in_word {
        words.push(cur);
    }
    Ok(words)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn full_width_and_dashes_fold_to_ascii() {
        assert_eq!(
            normalize("ｒｕｎ　—ｇｐｕｓ　２ myimg"),
            "run --gpus 2 myimg"
        );
        assert_eq!(normalize("run –port 80 img"), "run --port 80 img");
        assert_eq!(
            normalize("run --env “A=b c” img"),
            "run --env \"A=b c\" img"
        );
        // A dash inside a word is left alone.
        assert_eq!(normalize("my—img"), "my—img");
    }

    #[test]
    fn quoting() {
        assert_eq!(
            tokenize(r#"run --env "A=b c" 'x y' z\ w"#).unwrap(),
            vec!["run", "--env", "A=b c", "x y", "z w"]
        );
        assert_eq!(tokenize(r#"a "" b"#).unwrap(), vec!["a", "", "b"]);
        assert!(tokenize(r#"a "b"#).is_err());
    }
}
