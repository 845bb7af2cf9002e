//! `/audit`: the event log, newest first, and whether its hash chain verifies.

use crate::components::problem::Problem;
use crate::functions::history::get_audit_log;
use crate::pages::format_time;
use leptos::prelude::*;
use leptos_router::hooks::use_query_map;

#[component]
pub fn AuditPage() -> impl IntoView {
    let query = use_query_map();
    let before = move || query.read().get("before").and_then(|b| b.parse::<i64>().ok());
    let data = Resource::new(before, get_audit_log);
    view! {
        <h1>"Audit log"</h1>
        <Transition fallback=|| view! { <p>"Loading…"</p> }>
            {move || Suspend::new(async move {
                match data.await {
                    Err(e) => view! { <Problem error=e/> }.into_any(),
                    Ok(page) => view! {
                        <p class=if page.verified { "chain ok" } else { "chain broken" } role="status">
                            {page.verify_message.clone()}
                        </p>
                        <table class="audit">
                            <thead>
                                <tr>
                                    <th scope="col">"#"</th>
                                    <th scope="col">"When"</th>
                                    <th scope="col">"Actor"</th>
                                    <th scope="col">"Action"</th>
                                    <th scope="col">"Tenant"</th>
                                    <th scope="col">"Subject"</th>
                                    <th scope="col">"Tool"</th>
                                    <th scope="col">"Result"</th>
                                    <th scope="col">"Hash"</th>
                                </tr>
                            </thead>
                            <tbody>
                                {page.rows.into_iter().map(|e| view! {
                                    <tr>
                                        <td>{e.seq}</td>
                                        <td>{format_time(e.at_ms)}</td>
                                        <td>{e.actor}</td>
                                        <td>{e.action}</td>
                                        <td>{e.tenant.unwrap_or_default()}</td>
                                        <td><code>{e.subject.unwrap_or_default()}</code></td>
                                        <td>{e.tool.unwrap_or_default()}</td>
                                        <td>{e.result_status}</td>
                                        <td><code title=e.hash.clone()>{e.hash.chars().take(12).collect::<String>()}</code></td>
                                    </tr>
                                }).collect_view()}
                            </tbody>
                        </table>
                        {page.next_before.map(|b| view! { <p><a href=format!("/audit?before={b}") rel="next">"Older"</a></p> })}
                    }
                    .into_any(),
                }
            })}
        </Transition>
    }
}
