//! `/admin`: kill switches, break-glass, breakers, people, keys, runs,
//! webhooks and the loaded policy with its history.
//!
//! Rendered on the server only. Every action is a plain form posting to its
//! server function, so the page works without script (the server answers a
//! form post with a redirect back here). `AdminForms` is the one island: it
//! sends the forms itself, shows what the server answered beside the form, and
//! swaps in the server's new rendering of the page after a change. No admin
//! type is compiled into the browser bundle.

use crate::components::layout::use_session;
use crate::components::problem::Problem;
use crate::error::AppError;
use crate::functions::admin::*;
use crate::model::AdminView;
use crate::pages::format_time;
use leptos::prelude::*;
use leptos::server_fn::ServerFn;

/// A form that posts to a server function (`action`: its URL), with the session's CSRF token.
/// Its answer is shown in the `Said` named `said`.
#[component]
fn PostForm(action: &'static str, said: &'static str, csrf: StoredValue<String>, children: Children) -> impl IntoView {
    view! {
        <form method="post" action=action data-said=said>
            <input type="hidden" name="csrf" value=csrf.get_value()/>
            {children()}
        </form>
    }
}

/// Where the answer to the forms named `name` appears (filled in the browser).
/// `secret`: the answer is "id\nsecret", a new key's or webhook's, shown once.
#[component]
fn Said(name: &'static str, #[prop(optional)] secret: Option<&'static str>) -> impl IntoView {
    view! { <div class="said" data-said-for=name data-secret=secret></div> }
}

#[component]
pub fn AdminPage() -> impl IntoView {
    let session = use_session();
    let data = Resource::new(|| (), |_| get_admin());
    view! {
        <h1>"Administration"</h1>
        <PlainFormError/>
        <div id="admin">
            <Transition fallback=|| view! { <p>"Loading…"</p> }>
                {move || Suspend::new(async move {
                    let csrf = StoredValue::new(session.await.map(|s| s.csrf).unwrap_or_default());
                    match data.await {
                        Err(e) => view! { <Problem error=e/> }.into_any(),
                        Ok(v) => view! {
                            <Switches v=v.clone() csrf/>
                            <BreakGlass v=v.clone() csrf/>
                            <People v=v.clone() csrf/>
                            <Keys v=v.clone() csrf/>
                            <Runs v=v.clone() csrf/>
                            <Webhooks v=v.clone() csrf/>
                            <PolicyHistory v/>
                        }
                        .into_any(),
                    }
                })}
            </Transition>
        </div>
        <AdminForms/>
    }
}

/// What the last form posted without script failed with: server_fn sends
/// such a post back here with the error in the query (`__err`).
#[component]
fn PlainFormError() -> impl IntoView {
    use leptos::server_fn::error::ServerFnUrlError;
    let query = leptos_router::hooks::use_query_map();
    let error = query
        .read_untracked()
        .get("__err")
        .map(|e| ServerFnUrlError::<AppError>::decode_err(&e).to_string());
    error.map(|e| view! { <p class="form-error" role="alert">{e}</p> })
}

/// Sends the admin forms without leaving the page: the form's buttons are
/// disabled while it is on its way; on success the page's sections are
/// replaced by the server's new rendering and the answer shown under the
/// form; on failure the answer is shown and what was typed stays.
#[island]
fn AdminForms() -> impl IntoView {
    #[cfg(feature = "hydrate")]
    {
        use wasm_bindgen::JsCast;
        let handle = window_event_listener(leptos::ev::submit, move |ev| {
            let form = ev.target().and_then(|t| t.dyn_into::<web_sys::HtmlFormElement>().ok());
            let Some((form, said)) = form.and_then(|f| f.get_attribute("data-said").map(|s| (f, s))) else {
                return;
            };
            ev.prevent_default();
            leptos::task::spawn_local(browser::send(form, said));
        });
        on_cleanup(move || handle.remove());
    }
}

#[cfg(feature = "hydrate")]
mod browser {
    use crate::components::live::refresh_region;
    use crate::error::AppError;
    use wasm_bindgen::{JsCast, JsValue};
    use wasm_bindgen_futures::JsFuture;
    use web_sys::{Document, Element, HtmlFormElement};

    pub async fn send(form: HtmlFormElement, said: String) {
        set_busy(&form, true);
        let answer = post(&form).await;
        if answer.is_ok() {
            refresh_region("admin").await;
        }
        // After a refresh this form is gone; otherwise it is free again.
        set_busy(&form, false);
        show(&said, answer);
    }

    fn set_busy(form: &HtmlFormElement, busy: bool) {
        let _ = form.set_attribute("aria-busy", if busy { "true" } else { "false" });
        if let Ok(buttons) = form.query_selector_all("button") {
            for i in 0..buttons.length() {
                if let Some(b) = buttons
                    .item(i)
                    .and_then(|n| n.dyn_into::<web_sys::HtmlButtonElement>().ok())
                {
                    b.set_disabled(busy);
                }
            }
        }
    }

    /// The server function's answer: its text, or the error to show.
    async fn post(form: &HtmlFormElement) -> Result<String, String> {
        let unreachable = |e: JsValue| format!("Could not reach the server: {}", e.as_string().unwrap_or_default());
        let window = web_sys::window().ok_or_else(|| "No window.".to_owned())?;
        let data = web_sys::FormData::new_with_form(form).map_err(unreachable)?;
        let body = web_sys::UrlSearchParams::new_with_str_sequence_sequence(&data).map_err(unreachable)?;
        let headers = web_sys::Headers::new().map_err(unreachable)?;
        headers
            .set("Content-Type", "application/x-www-form-urlencoded")
            .map_err(unreachable)?;
        headers.set("Accept", "application/json").map_err(unreachable)?;
        let init = web_sys::RequestInit::new();
        init.set_method("POST");
        init.set_headers(&headers);
        init.set_body(&JsValue::from(body.to_string()));
        let action = form.get_attribute("action").unwrap_or_default();
        let res: web_sys::Response = JsFuture::from(window.fetch_with_str_and_init(&action, &init))
            .await
            .map_err(unreachable)?
            .dyn_into()
            .map_err(unreachable)?;
        let text = JsFuture::from(res.text().map_err(unreachable)?)
            .await
            .map_err(unreachable)?
            .as_string()
            .unwrap_or_default();
        if res.ok() {
            serde_json::from_str::<String>(&text).map_err(|_| AppError::Internal.to_string())
        } else {
            Err(serde_json::from_str::<AppError>(&text)
                .unwrap_or(AppError::Internal)
                .to_string())
        }
    }

    /// Put the answer in the `Said` of the form's name.
    fn show(said: &str, answer: Result<String, String>) {
        let Some(doc) = web_sys::window().and_then(|w| w.document()) else {
            return;
        };
        let Ok(Some(place)) = doc.query_selector(&format!("[data-said-for=\"{said}\"]")) else {
            return;
        };
        place.set_text_content(None);
        let made = match (answer, place.get_attribute("data-secret")) {
            (Err(m), _) => element(&doc, "p", "form-error", "alert", &m),
            (Ok(m), Some(what)) => {
                let (id, secret) = m.split_once('\n').unwrap_or((&m, ""));
                element(&doc, "div", "shown-once", "status", "").and_then(|div| {
                    let said = format!("{what} {id} created. Copy it now: it is not shown again.");
                    let (text, code) = (
                        element(&doc, "p", "", "", &said)?,
                        element(&doc, "code", "secret", "", secret)?,
                    );
                    div.append_child(&text).ok()?;
                    div.append_child(&code).ok()?;
                    Some(div)
                })
            }
            (Ok(m), None) => element(&doc, "p", "ok", "status", &m),
        };
        if let Some(e) = made {
            let _ = place.append_child(&e);
        }
    }

    /// `<tag class role>text</tag>`; the text is text, never markup.
    fn element(doc: &Document, tag: &str, class: &str, role: &str, text: &str) -> Option<Element> {
        let e = doc.create_element(tag).ok()?;
        if !class.is_empty() {
            e.set_class_name(class);
        }
        if !role.is_empty() {
            e.set_attribute("role", role).ok()?;
        }
        if !text.is_empty() {
            e.set_text_content(Some(text));
        }
        Some(e)
    }
}

#[component]
fn Switches(v: AdminView, csrf: StoredValue<String>) -> impl IntoView {
    let engaged: Vec<_> = v.switches.iter().filter(|s| s.engaged).cloned().collect();
    view! {
        <section class="admin-section" aria-labelledby="switches">
            <h2 id="switches">"Kill switches"</h2>
            {if engaged.is_empty() {
                view! { <p>"No switch is on."</p> }.into_any()
            } else {
                view! {
                    <table>
                        <thead><tr><th scope="col">"Covers"</th><th scope="col">"Reason"</th><th scope="col">"By"</th><th scope="col">"Since"</th><th scope="col"></th></tr></thead>
                        <tbody>
                            {engaged.into_iter().map(|s| {
                                let label = if s.scope == "global" { "everything".to_owned() } else { format!("{} {}", s.scope, s.target) };
                                view! {
                                    <tr>
                                        <td>{label.clone()}</td>
                                        <td>{s.reason.clone()}</td>
                                        <td>{s.changed_by.clone()}</td>
                                        <td>{format_time(s.changed_at_ms)}</td>
                                        <td>
                                            <PostForm action=AdminSwitch::url() said="switch" csrf>
                                                <input type="hidden" name="scope" value=s.scope.clone()/>
                                                <input type="hidden" name="target" value=s.target.clone()/>
                                                <input type="hidden" name="engaged" value="false"/>
                                                <input name="reason" aria-label=format!("Why turn off {label}") placeholder="Why off" required/>
                                                <button type="submit" aria-label=format!("Turn off {label}")>"Turn off"</button>
                                            </PostForm>
                                        </td>
                                    </tr>
                                }
                            }).collect_view()}
                        </tbody>
                    </table>
                }
                .into_any()
            }}
            <PostForm action=AdminSwitch::url() said="switch" csrf>
                <input type="hidden" name="engaged" value="true"/>
                <div class="row">
                    <label>"Scope"
                        <select name="scope">
                            <option value="tool">"tool"</option>
                            <option value="tenant">"tenant"</option>
                            <option value="route">"route"</option>
                            <option value="global">"global"</option>
                        </select>
                    </label>
                    <label>"Target" <input name="target" list="targets" placeholder="email.send, acme, support/send"/></label>
                    <label>"Reason" <input name="reason" required/></label>
                    <button type="submit" class="danger">"Turn on"</button>
                </div>
                <datalist id="targets">
                    {v.tools.iter().chain(v.routes.iter()).map(|t| view! { <option value=t.clone()/> }).collect_view()}
                </datalist>
            </PostForm>
            <Said name="switch"/>

            <h3>"Route breakers"</h3>
            {if v.breakers.is_empty() {
                view! { <p>"Every route releases."</p> }.into_any()
            } else {
                v.breakers.into_iter().map(|b| view! {
                    <PostForm action=AdminResetBreaker::url() said="breaker" csrf>
                        <input type="hidden" name="route" value=b.route.clone()/>
                        <p class="banner banner-breaker">{format!("{} stopped releasing at {}: {}", b.route, format_time(b.tripped_at_ms), b.reason)}
                            " " <button type="submit">{format!("Reset {}", b.route)}</button></p>
                    </PostForm>
                }).collect_view().into_any()
            }}
            <Said name="breaker"/>
        </section>
    }
}

#[component]
fn BreakGlass(v: AdminView, csrf: StoredValue<String>) -> impl IntoView {
    let mine = v.break_glass.iter().find(|b| b.mine && b.active).cloned();
    view! {
        <section class="admin-section breakglass" aria-labelledby="breakglass">
            <h2 id="breakglass">"Break-glass"</h2>
            {match mine {
                Some(b) => view! {
                    <div class="banner banner-breakglass">
                        <p>{format!("You may approve alone until {} (incident {}).", format_time(b.ends_at_ms), b.incident)}</p>
                        <PostForm action=EndBreakGlass::url() said="bg-end" csrf>
                            <input type="hidden" name="id" value=b.id.clone()/>
                            <button type="submit">"End break-glass"</button>
                        </PostForm>
                    </div>
                }
                .into_any(),
                None => view! {
                    <p>"For an emergency only: for up to an hour you may approve actions alone, destructive ones too. Everyone sees a red banner, and every use is recorded and announced."</p>
                    <PostForm action=StartBreakGlass::url() said="bg-start" csrf>
                        <div class="row">
                            <label>"Your password" <input name="password" type="password" autocomplete="current-password" required/></label>
                            <label>"Incident" <input name="incident" placeholder="INC-1234" required/></label>
                            <label>"Minutes" <input name="minutes" type="number" min="1" max="60" value="30" required/></label>
                        </div>
                        <label>"Why you need it" <input name="reason" class="wide" required/></label>
                        <button type="submit" class="danger">"Start break-glass"</button>
                    </PostForm>
                }
                .into_any(),
            }}
            <Said name="bg-start"/>
            <Said name="bg-end"/>
            {(!v.break_glass.is_empty()).then(|| view! {
                <details>
                    <summary>"Recent break-glass sessions"</summary>
                    <ul>
                        {v.break_glass.into_iter().map(|b| view! {
                            <li>{format!("{} · {} · {} → {} · {}", b.username, b.incident, format_time(b.started_at_ms),
                                b.ended_at_ms.map(format_time).unwrap_or_else(|| if b.active { "now".into() } else { format_time(b.ends_at_ms) }), b.reason)}</li>
                        }).collect_view()}
                    </ul>
                </details>
            })}
        </section>
    }
}

#[component]
fn People(v: AdminView, csrf: StoredValue<String>) -> impl IntoView {
    view! {
        <section class="admin-section" aria-labelledby="people">
            <h2 id="people">"People"</h2>
            <table>
                <thead><tr><th scope="col">"Name"</th><th scope="col">"Roles and tenants"</th><th scope="col">"Password"</th><th scope="col">"State"</th></tr></thead>
                <tbody>
                    {v.people.into_iter().map(|p| {
                        let name = p.username.clone();
                        let (id_access, id_password, id_toggle) = (p.id.clone(), p.id.clone(), p.id.clone());
                        let (roles, tenants) = (p.roles.join(","), p.tenants.join(","));
                        let toggle = if p.disabled { "Enable" } else { "Disable" };
                        let labels = (
                            format!("Roles of {name}"),
                            format!("Tenants of {name}"),
                            format!("Save access of {name}"),
                            format!("New password for {name}"),
                            format!("Reset password of {name}"),
                            format!("{toggle} {name}"),
                        );
                        let (l_roles, l_tenants, l_save, l_new, l_reset, l_toggle) = labels;
                        let next_state = (!p.disabled).to_string();
                        view! {
                            <tr class:disabled=p.disabled>
                                <td>{name}</td>
                                <td>
                                    <PostForm action=AdminSetAccess::url() said="access" csrf>
                                        <input type="hidden" name="user_id" value=id_access/>
                                        <input name="roles" value=roles aria-label=l_roles/>
                                        <input name="tenants" value=tenants aria-label=l_tenants/>
                                        <button type="submit" aria-label=l_save>"Save"</button>
                                    </PostForm>
                                </td>
                                <td>
                                    <PostForm action=AdminResetPassword::url() said="password" csrf>
                                        <input type="hidden" name="user_id" value=id_password/>
                                        <input name="password" type="password" autocomplete="new-password" aria-label=l_new required/>
                                        <button type="submit" aria-label=l_reset>"Reset"</button>
                                    </PostForm>
                                </td>
                                <td>
                                    <PostForm action=AdminSetDisabled::url() said="disable" csrf>
                                        <input type="hidden" name="user_id" value=id_toggle/>
                                        <input type="hidden" name="disabled" value=next_state/>
                                        {if p.disabled { "disabled " } else { "" }}
                                        <button type="submit" aria-label=l_toggle>{toggle}</button>
                                    </PostForm>
                                </td>
                            </tr>
                        }
                    }).collect_view()}
                </tbody>
            </table>
            <Said name="access"/>
            <Said name="password"/>
            <Said name="disable"/>
            <h3>"Add a person"</h3>
            <PostForm action=AdminAddUser::url() said="add-user" csrf>
                <div class="row">
                    <label>"Name" <input name="username" required/></label>
                    <label>"Password" <input name="password" type="password" autocomplete="new-password" required/></label>
                    <label>"Roles" <input name="roles" placeholder="reviewer,auditor,admin" required/></label>
                    <label>"Tenants" <input name="tenants" placeholder="acme,globex"/></label>
                    <button type="submit">"Add"</button>
                </div>
            </PostForm>
            <Said name="add-user"/>
        </section>
    }
}

#[component]
fn Keys(v: AdminView, csrf: StoredValue<String>) -> impl IntoView {
    view! {
        <section class="admin-section" aria-labelledby="keys">
            <h2 id="keys">"Keys"</h2>
            <table>
                <thead><tr><th scope="col">"Name"</th><th scope="col">"Kind"</th><th scope="col">"Scope"</th><th scope="col">"Tools"</th><th scope="col">"Starts with"</th><th scope="col"></th></tr></thead>
                <tbody>
                    {v.keys.into_iter().map(|k| view! {
                        <tr class:disabled=k.revoked>
                            <td>{k.name.clone()}</td>
                            <td>{k.kind.clone()}</td>
                            <td>{k.scope.clone()}</td>
                            <td>{k.tools.clone()}</td>
                            <td><code>{format!("{}…", k.hint)}</code></td>
                            <td>
                                {if k.revoked {
                                    view! { <span>"revoked"</span> }.into_any()
                                } else {
                                    view! {
                                        <PostForm action=AdminRevokeKey::url() said="revoke-key" csrf>
                                            <input type="hidden" name="id" value=k.id.clone()/>
                                            <button type="submit" aria-label=format!("Revoke key {}", k.name)>"Revoke"</button>
                                        </PostForm>
                                    }
                                    .into_any()
                                }}
                            </td>
                        </tr>
                    }).collect_view()}
                </tbody>
            </table>
            <Said name="revoke-key"/>
            <h3>"Create a key"</h3>
            <PostForm action=AdminCreateKey::url() said="key" csrf>
                <div class="row">
                    <label>"Kind" <select name="kind"><option value="service">"service"</option><option value="executor">"executor"</option></select></label>
                    <label>"Key name" <input name="name" required/></label>
                    <label>"Tenant (service)" <input name="tenant"/></label>
                    <label>"Env" <input name="env" required/></label>
                    <label>"Tools (executor)" <input name="tools" placeholder="ticket.close,email.send"/></label>
                    <button type="submit">"Create"</button>
                </div>
            </PostForm>
            <Said name="key" secret="Key"/>
        </section>
    }
}

#[component]
fn Runs(v: AdminView, csrf: StoredValue<String>) -> impl IntoView {
    view! {
        <section class="admin-section" aria-labelledby="runs">
            <h2 id="runs">"Recent runs"</h2>
            {if v.runs.is_empty() {
                view! { <p>"No runs yet."</p> }.into_any()
            } else {
                view! {
                    <table>
                        <thead><tr><th scope="col">"Run"</th><th scope="col">"Where"</th><th scope="col">"Route"</th><th scope="col">"Started"</th><th scope="col"></th></tr></thead>
                        <tbody>
                            {v.runs.into_iter().map(|r| view! {
                                <tr>
                                    <td><code>{r.id.clone()}</code></td>
                                    <td>{format!("{}/{}", r.tenant, r.env)}</td>
                                    <td>{r.route.clone()}</td>
                                    <td>{format_time(r.created_at_ms)}</td>
                                    <td>{match r.revoked.clone() {
                                        Some(why) => view! { <span>{format!("revoked: {why}")}</span> }.into_any(),
                                        None => view! {
                                            <PostForm action=AdminRevokeRun::url() said="revoke-run" csrf>
                                                <input type="hidden" name="run_id" value=r.id.clone()/>
                                                <input name="reason" aria-label=format!("Why revoke {}", r.id) placeholder="Why" required/>
                                                <button type="submit" aria-label=format!("Revoke run {}", r.id)>"Revoke"</button>
                                            </PostForm>
                                        }
                                        .into_any(),
                                    }}</td>
                                </tr>
                            }).collect_view()}
                        </tbody>
                    </table>
                }
                .into_any()
            }}
            <Said name="revoke-run"/>
        </section>
    }
}

#[component]
fn Webhooks(v: AdminView, csrf: StoredValue<String>) -> impl IntoView {
    view! {
        <section class="admin-section" aria-labelledby="webhooks">
            <h2 id="webhooks">"Notifications"</h2>
            <p>{format!("{} deliveries waiting.", v.undelivered)}</p>
            <ul>
                {v.webhooks.into_iter().map(|w| view! {
                    <li>
                        <PostForm action=AdminRemoveWebhook::url() said="unhook" csrf>
                            <input type="hidden" name="id" value=w.id.clone()/>
                            {format!("{} ({}) for {} ", w.url, w.format, w.events)}
                            <button type="submit" aria-label=format!("Remove webhook {}", w.url)>"Remove"</button>
                        </PostForm>
                    </li>
                }).collect_view()}
            </ul>
            <PostForm action=AdminAddWebhook::url() said="hook" csrf>
                <div class="row">
                    <label>"Webhook URL" <input name="url" type="url" required/></label>
                    <label>"Events" <input name="events" value="*"/></label>
                    <label>"Format" <select name="format"><option value="json">"json"</option><option value="slack">"slack"</option></select></label>
                    <button type="submit">"Add webhook"</button>
                </div>
            </PostForm>
            <Said name="unhook"/>
            <Said name="hook" secret="Webhook"/>
        </section>
    }
}

#[component]
fn PolicyHistory(v: AdminView) -> impl IntoView {
    view! {
        <section class="admin-section" aria-labelledby="policy">
            <h2 id="policy">"Policy"</h2>
            <p>{format!("Tools: {}", v.tools.join(", "))}</p>
            <p>{format!("Routes: {}", v.routes.join(", "))}</p>
            <ul class="policy-history">
                {v.policy.into_iter().map(|p| view! {
                    <li>
                        <details>
                            <summary>{format!("{} · sha256 {} · loaded by {}", format_time(p.loaded_at_ms), &p.hash[..p.hash.len().min(12)], p.loaded_by)}</summary>
                            <pre class="whole">{p.diff}</pre>
                        </details>
                    </li>
                }).collect_view()}
            </ul>
        </section>
    }
}
