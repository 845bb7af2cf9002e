//! Live updates: the server's event stream tells the page when something it
//! shows has changed, and the page fetches it again. Browser only.

/// Call `refresh` whenever the server says proposals changed.
pub fn on_server_change(refresh: impl Fn() + Send + Sync + 'static) {
    #[cfg(feature = "hydrate")]
    {
        use leptos::prelude::*;
        use send_wrapper::SendWrapper;
        use wasm_bindgen::prelude::*;
        let refresh = std::sync::Arc::new(refresh);
        Effect::new(move |_| {
            let Ok(es) = web_sys::EventSource::new("/events") else {
                return;
            };
            let r = refresh.clone();
            let cb = Closure::<dyn Fn(web_sys::MessageEvent)>::new(move |_: web_sys::MessageEvent| r());
            es.set_onmessage(Some(cb.as_ref().unchecked_ref()));
            let keep = SendWrapper::new((es, cb));
            on_cleanup(move || {
                let (es, _cb) = keep.take();
                es.close();
            });
        });
    }
    #[cfg(not(feature = "hydrate"))]
    {
        let _ = refresh;
    }
}
