//! The diff a reviewer reads first: line by line, with the changed words of
//! each changed line marked (crate `similar`). Computed once, by the server,
//! when the proposal is made.

use serde::{Deserialize, Serialize};
use similar::{ChangeTag, TextDiff};

/// What a line of the diff is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum Tag {
    Equal,
    Delete,
    Insert,
}

/// A run of text in a diff line; `emph` marks the words that changed.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Span {
    pub emph: bool,
    pub text: String,
}

/// One line of the diff, with its numbers on each side. Stored as JSON with
/// the proposal, in this shape.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Line {
    pub tag: Tag,
    pub old_no: Option<u32>,
    pub new_no: Option<u32>,
    pub spans: Vec<Span>,
}

/// At most this many lines are kept; a longer diff is cut with a marker line.
const MAX_LINES: usize = 2000;

pub fn compute(before: &str, after: &str) -> Vec<Line> {
    let diff = TextDiff::configure()
        .timeout(std::time::Duration::from_millis(200))
        .diff_lines(before, after);
    let mut out = Vec::new();
    for op in diff.ops() {
        for change in diff.iter_inline_changes(op) {
            if out.len() == MAX_LINES {
                out.push(Line {
                    tag: Tag::Equal,
                    old_no: None,
                    new_no: None,
                    spans: vec![Span {
                        emph: false,
                        text: "… (diff cut here)".into(),
                    }],
                });
                return out;
            }
            let tag = match change.tag() {
                ChangeTag::Equal => Tag::Equal,
                ChangeTag::Delete => Tag::Delete,
                ChangeTag::Insert => Tag::Insert,
            };
            let spans = change
                .iter_strings_lossy()
                .map(|(emph, text)| Span {
                    emph,
                    text: text.trim_end_matches('\n').to_owned(),
                })
                .filter(|s| !s.text.is_empty())
                .collect();
            out.push(Line {
                tag,
                old_no: change.old_index().map(|i| i as u32 + 1),
                new_no: change.new_index().map(|i| i as u32 + 1),
                spans,
            });
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn changed_line_shows_delete_and_insert_with_the_changed_word_marked() {
        let d = compute("status: open\nassignee: bob", "status: closed\nassignee: bob");
        assert_eq!(d.len(), 3);
        assert_eq!(d[0].tag, Tag::Delete);
        assert_eq!(d[1].tag, Tag::Insert);
        assert_eq!(d[2].tag, Tag::Equal);
        assert!(d[0].spans.iter().any(|s| s.emph && s.text == "open"), "{:?}", d[0]);
        assert!(d[1].spans.iter().any(|s| s.emph && s.text == "closed"), "{:?}", d[1]);
        assert_eq!(d[2].old_no, Some(2));
        assert_eq!(d[2].new_no, Some(2));
    }

    #[test]
    fn identical_text_has_no_changes() {
        let d = compute("a\nb", "a\nb");
        assert!(d.iter().all(|l| l.tag == Tag::Equal));
    }
}
