//! `/`: the pending queue of the reviewer's tenants, oldest first, live; the
//! proposals of one run (an agent's parallel calls) grouped under a line
//! saying how many and for whom. Keys: j / k move, Enter opens.

use crate::components::badges::{EnvBadge, RiskMarkers};
use crate::components::problem::Problem;
use crate::functions::proposals::get_queue;
use crate::model::{age, run_group_title, QueueRow};
use leptos::prelude::*;

/// Rendered on the server; `QueueKeys` adds the keys and the live refresh.
#[component]
pub fn QueuePage() -> impl IntoView {
    let data = Resource::new(|| (), |_| get_queue());
    view! {
        <h1>"Pending approvals"</h1>
        <p class="hint">"Keys: " <kbd>"j"</kbd> " / " <kbd>"k"</kbd> " to move, " <kbd>"Enter"</kbd> " to open."</p>
        <div id="queue">
        <Transition fallback=|| view! { <p>"Loading…"</p> }>
            {move || Suspend::new(async move {
                match data.await {
                    Err(e) => view! { <Problem error=e/> }.into_any(),
                    Ok(q) if q.rows.is_empty() => view! {
                        <p class="empty" role="status">"Nothing waiting for review. New proposals appear here as they arrive."</p>
                    }
                    .into_any(),
                    Ok(q) => {
                        let now = q.now_ms;
                        view! {
                            <table class="queue">
                                <caption class="sr-only">"Proposals waiting for a decision, oldest first"</caption>
                                <thead>
                                    <tr>
                                        <th scope="col">"Tool"</th>
                                        <th scope="col">"Where"</th>
                                        <th scope="col">"Waiting"</th>
                                        <th scope="col">"Approvals"</th>
                                        <th scope="col">"Risk"</th>
                                        <th scope="col">"Reason"</th>
                                    </tr>
                                </thead>
                                {q
                                    .by_run()
                                    .into_iter()
                                    .scan(0usize, |seen, rows| {
                                        let first = *seen;
                                        *seen += rows.len();
                                        Some(view! { <RunRows rows first now/> })
                                    })
                                    .collect_view()}
                            </table>
                        }
                        .into_any()
                    }
                }
            })}
        </Transition>
        </div>
        <QueueKeys/>
    }
}

/// One run's rows of the queue, headed by how many and for whom when there
/// are several; `first` is the index of its first row in the whole queue.
#[component]
fn RunRows(rows: Vec<QueueRow>, first: usize, now: i64) -> impl IntoView {
    let title = (rows.len() > 1).then(|| run_group_title(&rows));
    let grouped = title.is_some();
    view! {
        <tbody class:run-group=grouped>
            {title.map(|t| view! {
                <tr class="run-head"><th colspan="6" scope="rowgroup">{t}</th></tr>
            })}
            {rows
                .into_iter()
                .enumerate()
                .map(|(i, r)| {
                    let selected = first + i == 0;
                    let href = format!("/proposals/{}", r.id);
                    view! {
                        <tr class="item" aria-selected=selected.to_string() class:selected=selected>
                            <td><a href=href>{r.tool.clone()}</a></td>
                            <td><EnvBadge tenant=r.tenant.clone() env=r.env.clone()/></td>
                            <td>{age(now - r.created_at_ms)}</td>
                            <td>{format!("{} of {}", r.approvals, r.approvals_required)}</td>
                            <td><RiskMarkers destructive=r.destructive irreversible=r.irreversible/></td>
                            <td class="reason">{r.reason_short.clone()}</td>
                        </tr>
                    }
                })
                .collect_view()}
        </tbody>
    }
}

/// The queue's keys (j / k move the selection, Enter opens it) and its live
/// refresh: when the server says proposals changed, the table is fetched
/// again and swapped in, and the selection kept where it was.
#[island]
fn QueueKeys() -> impl IntoView {
    #[cfg(feature = "hydrate")]
    {
        use crate::components::live::{on_server_change, refresh_region, shortcut_key};
        use leptos::wasm_bindgen::JsCast;
        use leptos::web_sys::{Element, HtmlAnchorElement};
        let selected = StoredValue::new(0usize);
        let rows = || -> Vec<Element> {
            let Ok(list) = document().query_selector_all("#queue table.queue tbody tr.item") else {
                return Vec::new();
            };
            (0..list.length())
                .filter_map(|i| list.item(i)?.dyn_into::<Element>().ok())
                .collect()
        };
        // Mark the selected row; answers the rows.
        let show = move || {
            let rows = rows();
            let at = selected.get_value().min(rows.len().saturating_sub(1));
            selected.set_value(at);
            for (i, row) in rows.iter().enumerate() {
                let on = i == at;
                let _ = row.class_list().toggle_with_force("selected", on);
                let _ = row.set_attribute("aria-selected", if on { "true" } else { "false" });
            }
            rows
        };
        let handle = window_event_listener(leptos::ev::keydown, move |ev| {
            let Some(key) = shortcut_key(&ev) else { return };
            match key.as_str() {
                "j" => {
                    selected.update_value(|i| *i += 1);
                    show();
                }
                "k" => {
                    selected.update_value(|i| *i = i.saturating_sub(1));
                    show();
                }
                "Enter" => {
                    let link = show()
                        .get(selected.get_value())
                        .and_then(|row| row.query_selector("a").ok().flatten())
                        .and_then(|a| a.dyn_into::<HtmlAnchorElement>().ok());
                    if let Some(a) = link {
                        let _ = window().location().set_href(&a.href());
                    }
                }
                _ => {}
            }
        });
        on_cleanup(move || handle.remove());
        on_server_change(move |_| {
            leptos::task::spawn_local(async move {
                if refresh_region("queue").await {
                    show();
                }
            })
        });
    }
}
