// newsletter preview: reload the page when the server has a newer render.
//
// Served as a file because the page's Content-Security-Policy allows scripts from this
// origin only, never inline. The page carries its version in <body data-version>; this
// asks /events?version=<it>, a long poll that answers as soon as the server's version
// differs (or after ~20 s with the same one), and reloads the page when it does.
"use strict";

(function () {
  const SCROLL_KEY = "newsletter-preview-scroll";
  const body = document.body;
  const version = body.dataset.version || "";
  const live = document.getElementById("live");

  // Keep the place on the page across reloads: an editor saving often wants to stay put.
  const saved = sessionStorage.getItem(SCROLL_KEY);
  if (saved !== null) {
    sessionStorage.removeItem(SCROLL_KEY);
    window.scrollTo(0, Number(saved) || 0);
  }

  function status(text, state) {
    if (live) {
      live.textContent = text;
      live.dataset.state = state;
    }
  }

  function pause(ms) {
    return new Promise(function (resolve) { setTimeout(resolve, ms); });
  }

  async function poll() {
    // The first question (and the first after an error) names no version, so it is
    // answered at once: the server is there, and says whether this page is current.
    let ask = "";
    for (;;) {
      try {
        const response = await fetch("/events?version=" + encodeURIComponent(ask), {
          cache: "no-store",
          headers: {"Accept": "application/json"},
        });
        if (response.ok) {
          const data = await response.json();
          if (data.version !== version) {
            status("reloading…", "reloading");
            sessionStorage.setItem(SCROLL_KEY, String(window.scrollY));
            window.location.reload();
            return;
          }
          status("live", "live");
          ask = version;
          continue;
        }
        status("server error " + response.status + ", retrying…", "error");
      } catch (error) {
        // The server is stopped or restarting: try again, and reload once it answers.
        status("disconnected, retrying…", "error");
      }
      ask = "";
      await pause(1000);
    }
  }

  poll();
})();
