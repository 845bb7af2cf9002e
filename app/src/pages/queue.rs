//! `/`: the pending queue of the reviewer's tenants, oldest first, live.
//! Keys: j / k move, Enter opens.

use crate::components::badges::{EnvBadge, RiskMarkers};
use crate::components::live::on_server_change;
use crate::components::problem::Problem;
use crate::functions::proposals::get_queue;
use crate::model::age;
use leptos::prelude::*;
use leptos_router::hooks::use_navigate;

#[component]
pub fn QueuePage() -> impl IntoView {
    let data = Resource::new(|| (), |_| get_queue());
    on_server_change(move || data.refetch());
    let selected = RwSignal::new(0usize);
    let navigate = use_navigate();

    let handle = window_event_listener(leptos::ev::keydown, move |ev| {
        if ev.ctrl_key() || ev.meta_key() || ev.alt_key() {
            return;
        }
        let typing = ev
            .target()
            .and_then(|t| leptos::wasm_bindgen::JsCast::dyn_into::<leptos::web_sys::Element>(t).ok())
            .is_some_and(|e| matches!(e.tag_name().as_str(), "INPUT" | "TEXTAREA" | "SELECT"));
        if typing {
            return;
        }
        let n = data
            .get_untracked()
            .and_then(|r| r.ok())
            .map(|q| q.rows.len())
            .unwrap_or(0);
        match ev.key().as_str() {
            "j" if n > 0 => selected.update(|i| *i = (*i + 1).min(n - 1)),
            "k" => selected.update(|i| *i = i.saturating_sub(1)),
            "Enter" => {
                let id = data
                    .get_untracked()
                    .and_then(|r| r.ok())
                    .and_then(|q| q.rows.get(selected.get_untracked()).map(|r| r.id.clone()));
                if let Some(id) = id {
                    navigate(&format!("/proposals/{id}"), Default::default());
                }
            }
            _ => {}
        }
    });
    on_cleanup(move || handle.remove());

    view! {
        <h1>"Pending approvals"</h1>
        <p class="hint">"Keys: " <kbd>"j"</kbd> " / " <kbd>"k"</kbd> " to move, " <kbd>"Enter"</kbd> " to open."</p>
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
                                <tbody>
                                    {q
                                        .rows
                                        .into_iter()
                                        .enumerate()
                                        .map(|(i, r)| {
                                            let href = format!("/proposals/{}", r.id);
                                            view! {
                                                <tr
                                                    class:selected=move || selected.get() == i
                                                    aria-selected=move || (selected.get() == i).to_string()
                                                >
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
                            </table>
                        }
                        .into_any()
                    }
                }
            })}
        </Transition>
    }
}
