//! `/account`: the signed-in person's passkeys. Add one (the browser makes
//! it; the server verifies and keeps its public key), or remove one.
//! `PasskeyManager` is the island that runs the ceremonies.

use crate::components::layout::use_session;
use crate::components::problem::{FormError, Problem};
use crate::functions::account::get_account;
use crate::model::{Account, PasskeyItem};
use crate::pages::format_time;
use leptos::prelude::*;

#[component]
pub fn AccountPage() -> impl IntoView {
    let data = Resource::new(|| (), |_| get_account());
    let session = use_session();
    view! {
        <h1>"Your account"</h1>
        <Transition fallback=|| view! { <p>"Loading…"</p> }>
            {move || Suspend::new(async move {
                let csrf = session.await.map(|s| s.csrf).unwrap_or_default();
                match data.await {
                    Err(e) => view! { <Problem error=e/> }.into_any(),
                    Ok(a) => view! { <Passkeys account=a csrf/> }.into_any(),
                }
            })}
        </Transition>
    }
}

#[component]
fn Passkeys(account: Account, csrf: String) -> impl IntoView {
    let off = account.passkeys_off.clone();
    view! {
        <section aria-labelledby="passkeys-heading" class="passkeys">
            <h2 id="passkeys-heading">"Passkeys"</h2>
            <p class="hint">
                "Tools whose policy says " <code>"require_passkey"</code>
                " are approved or rejected with a passkey: your device signs that one decision, \
                 so a stolen session cannot decide for you."
            </p>
            <div id="passkey-list">
                {if account.passkeys.is_empty() {
                    view! { <p class="empty">"You have no passkey yet."</p> }.into_any()
                } else {
                    view! {
                        <ul class="passkey-list">
                            {account.passkeys.into_iter().map(|k| view! { <PasskeyLine key=k/> }).collect_view()}
                        </ul>
                    }
                    .into_any()
                }}
            </div>
            {match off {
                Some(why) => view! { <p class="problem" role="alert">{why}</p> }.into_any(),
                None => view! { <PasskeyManager csrf/> }.into_any(),
            }}
        </section>
    }
}

#[component]
fn PasskeyLine(key: PasskeyItem) -> impl IntoView {
    let id = key.id.clone();
    view! {
        <li data-passkey=id>
            <strong>{key.name.clone()}</strong>
            " · added " {format_time(key.created_at_ms)}
            " · " {key.last_used_at_ms.map(|t| format!("last used {}", format_time(t))).unwrap_or_else(|| "not used yet".into())}
            " "
            <button type="button" class="quiet remove-passkey" data-id=key.id aria-label=format!("Remove passkey {}", key.name)>
                "Remove"
            </button>
        </li>
    }
}

/// Adds a passkey (name it, then the browser asks for it) and removes one
/// (the Remove buttons of the list, which it listens to); the list is
/// fetched again after either.
#[island]
fn PasskeyManager(csrf: String) -> impl IntoView {
    let name = RwSignal::new(String::new());
    let error = RwSignal::new(None::<String>);
    let said = RwSignal::new(None::<String>);
    let busy = RwSignal::new(false);
    let csrf = StoredValue::new(csrf);
    #[cfg(not(feature = "hydrate"))]
    let _ = csrf;
    #[cfg(feature = "hydrate")]
    {
        use leptos::wasm_bindgen::JsCast;
        let handle = window_event_listener(leptos::ev::click, move |ev| {
            let Some(button) = ev
                .target()
                .and_then(|t| t.dyn_into::<leptos::web_sys::Element>().ok())
                .and_then(|e| e.closest("button.remove-passkey").ok().flatten())
            else {
                return;
            };
            let Some(id) = button.get_attribute("data-id") else {
                return;
            };
            leptos::task::spawn_local(async move {
                busy.set(true);
                let r = crate::functions::account::remove_passkey(id, csrf.get_value()).await;
                busy.set(false);
                match r {
                    Ok(m) => {
                        error.set(None);
                        said.set(Some(m));
                        crate::components::live::refresh_region("passkey-list").await;
                    }
                    Err(e) => error.set(Some(e.to_string())),
                }
            });
        });
        on_cleanup(move || handle.remove());
    }
    let add = move |ev: leptos::ev::SubmitEvent| {
        ev.prevent_default();
        #[cfg(feature = "hydrate")]
        leptos::task::spawn_local(async move {
            use crate::functions::account::{finish_passkey_registration, start_passkey_registration};
            if busy.get_untracked() {
                return;
            }
            busy.set(true);
            error.set(None);
            said.set(Some("Follow your browser: it asks for the passkey…".into()));
            let result = async {
                let c = start_passkey_registration(csrf.get_value())
                    .await
                    .map_err(|e| e.to_string())?;
                let credential = crate::components::passkey::create(&c.options).await?;
                finish_passkey_registration(c.ceremony, name.get_untracked(), credential, csrf.get_value())
                    .await
                    .map_err(|e| e.to_string())
            }
            .await;
            busy.set(false);
            match result {
                Ok(m) => {
                    said.set(Some(m));
                    name.set(String::new());
                    crate::components::live::refresh_region("passkey-list").await;
                }
                Err(e) => {
                    said.set(None);
                    error.set(Some(e));
                }
            }
        });
    };
    view! {
        <form class="add-passkey" on:submit=add>
            <label for="passkey-name">"Name (which device)"</label>
            <input
                id="passkey-name"
                maxlength="60"
                placeholder="e.g. work laptop"
                prop:value=move || name.get()
                on:input=move |ev| name.set(event_target_value(&ev))
            />
            <button type="submit" disabled=move || busy.get()>"Add a passkey"</button>
            {move || said.get().map(|m| view! { <p class="notice" role="status">{m}</p> })}
            <FormError message=Signal::derive(move || error.get())/>
        </form>
    }
}
