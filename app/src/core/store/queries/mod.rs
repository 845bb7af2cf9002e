//! Every SQL statement the system runs, grouped by what it touches. Each is
//! written once for both databases (see `on!`).

pub mod audit;
pub mod controls;
pub mod jobs;
pub mod keys;
pub mod notify;
pub mod policy;
pub mod proposals;
pub mod runs;
pub mod users;

use std::borrow::Cow;

/// The longest list one padded statement takes.
const MAX_PADDED: usize = 256;

/// `items` lengthened to the next power of two by repeating its last item,
/// for statements where a repeat changes nothing (an `IN` list; identical
/// rows of an `UPDATE … FROM (VALUES …)`). Prepared statements are cached by
/// their text, and a list of every length from 1 to 256 would have its own
/// text, prepared anew at almost every write (preparing a statement of a few
/// hundred bound values costs about as much as running it); padded, a handful
/// of texts per statement serve every write.
pub(crate) fn padded<T: Clone>(items: &[T]) -> Cow<'_, [T]> {
    let n = items.len();
    match items.last() {
        Some(last) if !n.is_power_of_two() && n < MAX_PADDED => {
            let mut v = items.to_vec();
            v.resize(n.next_power_of_two(), last.clone());
            Cow::Owned(v)
        }
        _ => Cow::Borrowed(items),
    }
}

/// `items` in consecutive pieces whose lengths are powers of two (at most
/// 256), largest first: for multi-row statements that cannot be padded (an
/// INSERT), so their texts stay few, as with `padded`.
pub(crate) fn power_of_two_chunks<T>(items: &[T]) -> impl Iterator<Item = &[T]> {
    let mut rest = items;
    std::iter::from_fn(move || {
        if rest.is_empty() {
            return None;
        }
        let n = rest.len().min(MAX_PADDED);
        let take = if n.is_power_of_two() {
            n
        } else {
            n.next_power_of_two() / 2
        };
        let (head, tail) = rest.split_at(take);
        rest = tail;
        Some(head)
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn padded_lists_repeat_the_last_item_up_to_a_power_of_two() {
        assert_eq!(padded(&[1, 2, 3]).as_ref(), &[1, 2, 3, 3]);
        assert_eq!(padded(&[1, 2, 3, 4, 5]).as_ref(), &[1, 2, 3, 4, 5, 5, 5, 5]);
        assert!(matches!(padded(&[1, 2, 3, 4]), Cow::Borrowed(_)));
        assert!(padded::<i32>(&[]).is_empty());
        let long: Vec<i32> = (0..300).collect();
        assert_eq!(
            padded(&long).len(),
            300,
            "past the largest padded length, a list is left as it is"
        );
    }

    #[test]
    fn power_of_two_chunks_cover_every_item_in_order() {
        for n in 0..600 {
            let items: Vec<usize> = (0..n).collect();
            let chunks: Vec<&[usize]> = power_of_two_chunks(&items).collect();
            assert!(chunks
                .iter()
                .all(|c| c.len().is_power_of_two() && c.len() <= MAX_PADDED));
            assert_eq!(chunks.concat(), items);
        }
        let lens: Vec<usize> = power_of_two_chunks(&[0; 147]).map(|c| c.len()).collect();
        assert_eq!(lens, vec![128, 16, 2, 1]);
    }
}
