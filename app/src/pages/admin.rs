//! `/admin`: kill switches, break-glass, breakers, people, keys, runs,
//! webhooks and the loaded policy with its history.

use crate::components::layout::use_session;
use crate::components::problem::Problem;
use crate::error::AppError;
use crate::functions::admin::*;
use crate::model::AdminView;
use crate::pages::format_time;
use leptos::prelude::*;

type Outcome = Option<Result<String, AppError>>;

/// What an admin action answered: a line of text, or the error.
#[component]
fn Said(#[prop(into)] value: Signal<Outcome>) -> impl IntoView {
    move || match value.get() {
        None => ().into_any(),
        Some(Ok(m)) => view! { <p class="ok" role="status">{m}</p> }.into_any(),
        Some(Err(e)) => view! { <p class="form-error" role="alert">{e.to_string()}</p> }.into_any(),
    }
}

/// A secret shown once (a new key or webhook secret): "id\nsecret".
#[component]
fn ShownOnce(#[prop(into)] value: Signal<Outcome>, what: &'static str) -> impl IntoView {
    move || match value.get() {
        None => ().into_any(),
        Some(Ok(m)) => {
            let (id, secret) = m
                .split_once('\n')
                .map(|(a, b)| (a.to_owned(), b.to_owned()))
                .unwrap_or((m.clone(), String::new()));
            view! {
                <div class="shown-once" role="status">
                    <p>{format!("{what} {id} created. Copy it now: it is not shown again.")}</p>
                    <code class="secret">{secret}</code>
                </div>
            }
            .into_any()
        }
        Some(Err(e)) => view! { <p class="form-error" role="alert">{e.to_string()}</p> }.into_any(),
    }
}

#[component]
pub fn AdminPage() -> impl IntoView {
    let session = use_session();
    let switch = ServerAction::<AdminSwitch>::new();
    let breaker = ServerAction::<AdminResetBreaker>::new();
    let bg_start = ServerAction::<StartBreakGlass>::new();
    let bg_end = ServerAction::<EndBreakGlass>::new();
    let add_user = ServerAction::<AdminAddUser>::new();
    let disable = ServerAction::<AdminSetDisabled>::new();
    let access = ServerAction::<AdminSetAccess>::new();
    let password = ServerAction::<AdminResetPassword>::new();
    let key = ServerAction::<AdminCreateKey>::new();
    let revoke_key = ServerAction::<AdminRevokeKey>::new();
    let revoke_run = ServerAction::<AdminRevokeRun>::new();
    let hook = ServerAction::<AdminAddWebhook>::new();
    let unhook = ServerAction::<AdminRemoveWebhook>::new();
    let data = Resource::new(
        move || {
            (
                switch.version().get() + breaker.version().get() + bg_start.version().get() + bg_end.version().get(),
                add_user.version().get() + disable.version().get() + access.version().get() + password.version().get(),
                key.version().get() + revoke_key.version().get() + revoke_run.version().get(),
                hook.version().get() + unhook.version().get(),
            )
        },
        |_| get_admin(),
    );
    view! {
        <h1>"Administration"</h1>
        <Transition fallback=|| view! { <p>"Loading…"</p> }>
            {move || Suspend::new(async move {
                let csrf = session.await.map(|s| s.csrf).unwrap_or_default();
                match data.await {
                    Err(e) => view! { <Problem error=e/> }.into_any(),
                    Ok(v) => view! {
                        <Switches v=v.clone() csrf=csrf.clone() switch breaker/>
                        <BreakGlass v=v.clone() csrf=csrf.clone() start=bg_start end=bg_end/>
                        <People v=v.clone() csrf=csrf.clone() add_user disable access password/>
                        <Keys v=v.clone() csrf=csrf.clone() key revoke_key/>
                        <Runs v=v.clone() csrf=csrf.clone() revoke_run/>
                        <Webhooks v=v.clone() csrf=csrf.clone() hook unhook/>
                        <PolicyHistory v/>
                    }
                    .into_any(),
                }
            })}
        </Transition>
    }
}

#[component]
fn Switches(
    v: AdminView,
    csrf: String,
    switch: ServerAction<AdminSwitch>,
    breaker: ServerAction<AdminResetBreaker>,
) -> impl IntoView {
    let csrf = StoredValue::new(csrf);
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
                                            <ActionForm action=switch>
                                                <input type="hidden" name="csrf" value=csrf.get_value()/>
                                                <input type="hidden" name="scope" value=s.scope.clone()/>
                                                <input type="hidden" name="target" value=s.target.clone()/>
                                                <input type="hidden" name="engaged" value="false"/>
                                                <input name="reason" aria-label=format!("Why turn off {label}") placeholder="Why off" required/>
                                                <button type="submit" aria-label=format!("Turn off {label}")>"Turn off"</button>
                                            </ActionForm>
                                        </td>
                                    </tr>
                                }
                            }).collect_view()}
                        </tbody>
                    </table>
                }
                .into_any()
            }}
            <ActionForm action=switch>
                <input type="hidden" name="csrf" value=csrf.get_value()/>
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
            </ActionForm>
            <Said value=Signal::derive(move || switch.value().get())/>

            <h3>"Route breakers"</h3>
            {if v.breakers.is_empty() {
                view! { <p>"Every route releases."</p> }.into_any()
            } else {
                v.breakers.into_iter().map(|b| view! {
                    <ActionForm action=breaker>
                        <input type="hidden" name="csrf" value=csrf.get_value()/>
                        <input type="hidden" name="route" value=b.route.clone()/>
                        <p class="banner banner-breaker">{format!("{} stopped releasing at {}: {}", b.route, format_time(b.tripped_at_ms), b.reason)}
                            " " <button type="submit">{format!("Reset {}", b.route)}</button></p>
                    </ActionForm>
                }).collect_view().into_any()
            }}
            <Said value=Signal::derive(move || breaker.value().get())/>
        </section>
    }
}

#[component]
fn BreakGlass(
    v: AdminView,
    csrf: String,
    start: ServerAction<StartBreakGlass>,
    end: ServerAction<EndBreakGlass>,
) -> impl IntoView {
    let csrf = StoredValue::new(csrf);
    let mine = v.break_glass.iter().find(|b| b.mine && b.active).cloned();
    view! {
        <section class="admin-section breakglass" aria-labelledby="breakglass">
            <h2 id="breakglass">"Break-glass"</h2>
            {match mine {
                Some(b) => view! {
                    <div class="banner banner-breakglass">
                        <p>{format!("You may approve alone until {} (incident {}).", format_time(b.ends_at_ms), b.incident)}</p>
                        <ActionForm action=end>
                            <input type="hidden" name="csrf" value=csrf.get_value()/>
                            <input type="hidden" name="id" value=b.id.clone()/>
                            <button type="submit">"End break-glass"</button>
                        </ActionForm>
                    </div>
                }
                .into_any(),
                None => view! {
                    <p>"For an emergency only: for up to an hour you may approve actions alone, destructive ones too. Everyone sees a red banner, and every use is recorded and announced."</p>
                    <ActionForm action=start>
                        <input type="hidden" name="csrf" value=csrf.get_value()/>
                        <div class="row">
                            <label>"Your password" <input name="password" type="password" autocomplete="current-password" required/></label>
                            <label>"Incident" <input name="incident" placeholder="INC-1234" required/></label>
                            <label>"Minutes" <input name="minutes" type="number" min="1" max="60" value="30" required/></label>
                        </div>
                        <label>"Why you need it" <input name="reason" class="wide" required/></label>
                        <button type="submit" class="danger">"Start break-glass"</button>
                    </ActionForm>
                }
                .into_any(),
            }}
            <Said value=Signal::derive(move || start.value().get())/>
            <Said value=Signal::derive(move || end.value().get())/>
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
fn People(
    v: AdminView,
    csrf: String,
    add_user: ServerAction<AdminAddUser>,
    disable: ServerAction<AdminSetDisabled>,
    access: ServerAction<AdminSetAccess>,
    password: ServerAction<AdminResetPassword>,
) -> impl IntoView {
    let csrf = StoredValue::new(csrf);
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
                                    <ActionForm action=access>
                                        <input type="hidden" name="csrf" value=csrf.get_value()/>
                                        <input type="hidden" name="user_id" value=id_access/>
                                        <input name="roles" value=roles aria-label=l_roles/>
                                        <input name="tenants" value=tenants aria-label=l_tenants/>
                                        <button type="submit" aria-label=l_save>"Save"</button>
                                    </ActionForm>
                                </td>
                                <td>
                                    <ActionForm action=password>
                                        <input type="hidden" name="csrf" value=csrf.get_value()/>
                                        <input type="hidden" name="user_id" value=id_password/>
                                        <input name="password" type="password" autocomplete="new-password" aria-label=l_new required/>
                                        <button type="submit" aria-label=l_reset>"Reset"</button>
                                    </ActionForm>
                                </td>
                                <td>
                                    <ActionForm action=disable>
                                        <input type="hidden" name="csrf" value=csrf.get_value()/>
                                        <input type="hidden" name="user_id" value=id_toggle/>
                                        <input type="hidden" name="disabled" value=next_state/>
                                        {if p.disabled { "disabled " } else { "" }}
                                        <button type="submit" aria-label=l_toggle>{toggle}</button>
                                    </ActionForm>
                                </td>
                            </tr>
                        }
                    }).collect_view()}
                </tbody>
            </table>
            <Said value=Signal::derive(move || access.value().get())/>
            <Said value=Signal::derive(move || password.value().get())/>
            <Said value=Signal::derive(move || disable.value().get())/>
            <h3>"Add a person"</h3>
            <ActionForm action=add_user>
                <input type="hidden" name="csrf" value=csrf.get_value()/>
                <div class="row">
                    <label>"Name" <input name="username" required/></label>
                    <label>"Password" <input name="password" type="password" autocomplete="new-password" required/></label>
                    <label>"Roles" <input name="roles" placeholder="reviewer,auditor,admin" required/></label>
                    <label>"Tenants" <input name="tenants" placeholder="acme,globex"/></label>
                    <button type="submit">"Add"</button>
                </div>
            </ActionForm>
            <Said value=Signal::derive(move || add_user.value().get())/>
        </section>
    }
}

#[component]
fn Keys(
    v: AdminView,
    csrf: String,
    key: ServerAction<AdminCreateKey>,
    revoke_key: ServerAction<AdminRevokeKey>,
) -> impl IntoView {
    let csrf = StoredValue::new(csrf);
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
                                        <ActionForm action=revoke_key>
                                            <input type="hidden" name="csrf" value=csrf.get_value()/>
                                            <input type="hidden" name="id" value=k.id.clone()/>
                                            <button type="submit" aria-label=format!("Revoke key {}", k.name)>"Revoke"</button>
                                        </ActionForm>
                                    }
                                    .into_any()
                                }}
                            </td>
                        </tr>
                    }).collect_view()}
                </tbody>
            </table>
            <Said value=Signal::derive(move || revoke_key.value().get())/>
            <h3>"Create a key"</h3>
            <ActionForm action=key>
                <input type="hidden" name="csrf" value=csrf.get_value()/>
                <div class="row">
                    <label>"Kind" <select name="kind"><option value="service">"service"</option><option value="executor">"executor"</option></select></label>
                    <label>"Key name" <input name="name" required/></label>
                    <label>"Tenant (service)" <input name="tenant"/></label>
                    <label>"Env" <input name="env" required/></label>
                    <label>"Tools (executor)" <input name="tools" placeholder="ticket.close,email.send"/></label>
                    <button type="submit">"Create"</button>
                </div>
            </ActionForm>
            <ShownOnce value=Signal::derive(move || key.value().get()) what="Key"/>
        </section>
    }
}

#[component]
fn Runs(v: AdminView, csrf: String, revoke_run: ServerAction<AdminRevokeRun>) -> impl IntoView {
    let csrf = StoredValue::new(csrf);
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
                                            <ActionForm action=revoke_run>
                                                <input type="hidden" name="csrf" value=csrf.get_value()/>
                                                <input type="hidden" name="run_id" value=r.id.clone()/>
                                                <input name="reason" aria-label=format!("Why revoke {}", r.id) placeholder="Why" required/>
                                                <button type="submit" aria-label=format!("Revoke run {}", r.id)>"Revoke"</button>
                                            </ActionForm>
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
            <Said value=Signal::derive(move || revoke_run.value().get())/>
        </section>
    }
}

#[component]
fn Webhooks(
    v: AdminView,
    csrf: String,
    hook: ServerAction<AdminAddWebhook>,
    unhook: ServerAction<AdminRemoveWebhook>,
) -> impl IntoView {
    let csrf = StoredValue::new(csrf);
    view! {
        <section class="admin-section" aria-labelledby="webhooks">
            <h2 id="webhooks">"Notifications"</h2>
            <p>{format!("{} deliveries waiting.", v.undelivered)}</p>
            <ul>
                {v.webhooks.into_iter().map(|w| view! {
                    <li>
                        <ActionForm action=unhook>
                            <input type="hidden" name="csrf" value=csrf.get_value()/>
                            <input type="hidden" name="id" value=w.id.clone()/>
                            {format!("{} ({}) for {} ", w.url, w.format, w.events)}
                            <button type="submit" aria-label=format!("Remove webhook {}", w.url)>"Remove"</button>
                        </ActionForm>
                    </li>
                }).collect_view()}
            </ul>
            <ActionForm action=hook>
                <input type="hidden" name="csrf" value=csrf.get_value()/>
                <div class="row">
                    <label>"Webhook URL" <input name="url" type="url" required/></label>
                    <label>"Events" <input name="events" value="*"/></label>
                    <label>"Format" <select name="format"><option value="json">"json"</option><option value="slack">"slack"</option></select></label>
                    <button type="submit">"Add webhook"</button>
                </div>
            </ActionForm>
            <Said value=Signal::derive(move || unhook.value().get())/>
            <ShownOnce value=Signal::derive(move || hook.value().get()) what="Webhook"/>
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
