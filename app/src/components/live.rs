//! Live updates. Pages are rendered on the server; the server's event stream
//! tells an island when something the page shows has changed, and the island
//! fetches the page again and swaps in the part that changed, so the server
//! stays the one place that renders it. Browser only: on the server these do
//! nothing.

/// Call `changed` with each message's data (`{"proposal":…,"status":…}`,
/// `{"controls":true}` or `{"lagged":true}`), and with `{"opened":true}` each
/// time the stream (re)connects, while the caller's owner lives.
pub fn on_server_change(changed: impl Fn(String) + Send + Sync + 'static) {
    #[cfg(feature = "hydrate")]
    {
        use leptos::prelude::*;
        use send_wrapper::SendWrapper;
        use wasm_bindgen::prelude::*;
        let changed = std::sync::Arc::new(changed);
        Effect::new(move |_| {
            let Ok(es) = web_sys::EventSource::new("/events") else {
                return;
            };
            let c = changed.clone();
            let cb = Closure::<dyn Fn(web_sys::MessageEvent)>::new(move |ev: web_sys::MessageEvent| {
                c(ev.data().as_string().unwrap_or_default())
            });
            es.set_onmessage(Some(cb.as_ref().unchecked_ref()));
            // What changed between the render and the (re)connection was
            // never sent: say so, for callers that refresh on any message.
            let c = changed.clone();
            // `data-live` on the body says the page now hears every change
            // (what browser tests wait for before changing things).
            let opened = Closure::<dyn Fn(web_sys::Event)>::new(move |_: web_sys::Event| {
                if let Some(body) = document().body() {
                    let _ = body.set_attribute("data-live", "open");
                }
                c("{\"opened\":true}".into())
            });
            es.set_onopen(Some(opened.as_ref().unchecked_ref()));
            // Stop listening when the page is left (a full navigation does
            // not clean islands up), and listen again if the browser brings
            // the page back from its cache.
            let closing = SendWrapper::new(es.clone());
            let hide = window_event_listener(leptos::ev::pagehide, move |_| closing.close());
            let show = window_event_listener(leptos::ev::pageshow, move |ev| {
                if ev.persisted() {
                    let _ = window().location().reload();
                }
            });
            let keep = SendWrapper::new((es, cb, opened));
            on_cleanup(move || {
                let (es, _cb, _opened) = keep.take();
                es.close();
                hide.remove();
                show.remove();
            });
        });
    }
    #[cfg(not(feature = "hydrate"))]
    {
        let _ = changed;
    }
}

/// Fetch this page again and replace the contents of the element `id` with
/// the server's new rendering of it. False if anything failed (the page then
/// stays as it was).
#[cfg(feature = "hydrate")]
pub async fn refresh_region(id: &str) -> bool {
    refresh_regions(&[id]).await.is_some()
}

/// Fetch this page again and replace the contents of each element of `ids`
/// that both renderings have with the server's new rendering of it. Answers
/// the fetched document (for islands to read their own new state from), or
/// None if the fetch failed (the page then stays as it was).
#[cfg(feature = "hydrate")]
pub async fn refresh_regions(ids: &[&str]) -> Option<web_sys::Document> {
    use wasm_bindgen::JsCast;
    use wasm_bindgen_futures::JsFuture;
    let window = web_sys::window()?;
    let href = window.location().href().ok()?;
    let res: web_sys::Response = JsFuture::from(window.fetch_with_str(&href))
        .await
        .ok()?
        .dyn_into()
        .ok()?;
    if !res.ok() || res.redirected() {
        return None;
    }
    let html = JsFuture::from(res.text().ok()?).await.ok()?.as_string()?;
    // The reviewer may have left while the page was fetched.
    if window.location().href().ok()? != href {
        return None;
    }
    let fresh = web_sys::DomParser::new()
        .ok()?
        .parse_from_string(&html, web_sys::SupportedType::TextHtml)
        .ok()?;
    let here = window.document()?;
    for id in ids {
        if let (Some(new), Some(old)) = (fresh.get_element_by_id(id), here.get_element_by_id(id)) {
            old.set_inner_html(&new.inner_html());
        }
    }
    Some(fresh)
}

/// The key pressed, if the press is a page shortcut: no modifier held, and
/// not typed into a form field.
#[cfg(feature = "hydrate")]
pub fn shortcut_key(ev: &web_sys::KeyboardEvent) -> Option<String> {
    use wasm_bindgen::JsCast;
    let typing = ev
        .target()
        .and_then(|t| t.dyn_into::<web_sys::Element>().ok())
        .is_some_and(|e| matches!(e.tag_name().as_str(), "INPUT" | "TEXTAREA" | "SELECT"));
    (!(typing || ev.ctrl_key() || ev.meta_key() || ev.alt_key())).then(|| ev.key())
}
