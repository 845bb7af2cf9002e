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

/// Changed words are marked only within a changed block of at most this
/// many lines a side: a reviewer reads a few changed lines word by word, and
/// a word diff of two large blocks costs far more than the line diff.
const MAX_INLINE_BLOCK: usize = 64;

/// The line diff of `before` and `after`. Its cost is bounded: the line diff
/// gives up refining after 100 ms (a coarser but correct diff), words are
/// marked only in small changed blocks, and at most `MAX_LINES` lines are
/// kept.
pub fn compute(before: &str, after: &str) -> Vec<Line> {
    let diff = TextDiff::configure()
        .timeout(std::time::Duration::from_millis(100))
        .diff_lines(before, after);
    let mut out = Vec::new();
    for op in diff.ops() {
        let (old, new) = (op.old_range().len(), op.new_range().len());
        let changes: Box<dyn Iterator<Item = similar::InlineChange<'_, str>>> =
            if old <= MAX_INLINE_BLOCK && new <= MAX_INLINE_BLOCK {
                Box::new(diff.iter_inline_changes(op))
            } else {
                Box::new(diff.iter_changes(op).map(similar::InlineChange::from))
            };
        for change in changes {
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
    fn a_large_changed_block_is_shown_by_line_without_a_word_diff_and_cut() {
        let side = |tag: char| (0..4800u32).map(|i| format!("{tag}{i:x}\n")).collect::<String>();
        let d = compute(&side('a'), &side('b'));
        assert_eq!(d.len(), MAX_LINES + 1, "cut, with a marker line");
        assert!(d.last().unwrap().spans[0].text.contains("cut"));
        assert!(
            d.iter().all(|l| l.spans.iter().all(|s| !s.emph)),
            "no word marks in a 4,800-line block"
        );
        assert!(d[..MAX_LINES].iter().all(|l| l.tag != Tag::Equal));
    }

    #[test]
    fn identical_text_has_no_changes() {
        let d = compute("a\nb", "a\nb");
        assert!(d.iter().all(|l| l.tag == Tag::Equal));
    }
}
