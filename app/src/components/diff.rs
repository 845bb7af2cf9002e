//! A diff as a reviewer reads it: removed and added lines, changed words marked.

use crate::model::{DiffLine, DiffTag};
use leptos::prelude::*;

#[component]
pub fn DiffView(lines: Vec<DiffLine>) -> impl IntoView {
    view! {
        <table class="diff" aria-label="Changes from before to after">
            <tbody>
                {lines
                    .into_iter()
                    .map(|l| {
                        let (class, sign, label) = match l.tag {
                            DiffTag::Equal => ("eq", " ", "unchanged"),
                            DiffTag::Delete => ("del", "−", "removed"),
                            DiffTag::Insert => ("ins", "+", "added"),
                        };
                        view! {
                            <tr class=class>
                                <td class="no">{l.old_no.map(|n| n.to_string())}</td>
                                <td class="no">{l.new_no.map(|n| n.to_string())}</td>
                                <td class="sign" aria-label=label>{sign}</td>
                                <td class="text">
                                    {l
                                        .spans
                                        .into_iter()
                                        .map(|s| {
                                            if s.emph {
                                                view! { <mark>{s.text}</mark> }.into_any()
                                            } else {
                                                view! { <span>{s.text}</span> }.into_any()
                                            }
                                        })
                                        .collect_view()}
                                </td>
                            </tr>
                        }
                    })
                    .collect_view()}
            </tbody>
        </table>
    }
}
