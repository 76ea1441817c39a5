// coupond admin console: the little script it has. The pages work without it; it only
// keeps the dashboard's numbers fresh and ignores a second click on a form that is
// already on its way (the server would replay the first answer anyway).
"use strict";

(function () {
  // <div data-refresh="/admin/fragments/…" data-every="5">: fetched again every few
  // seconds while the tab is visible, and swapped in. Stops once the session ends.
  function live(el) {
    var url = el.getAttribute("data-refresh");
    var every = Math.max(2, parseInt(el.getAttribute("data-every") || "5", 10)) * 1000;
    function again(delay) {
      window.setTimeout(tick, delay);
    }
    function tick() {
      if (document.hidden) {
        again(every);
        return;
      }
      fetch(url, { credentials: "same-origin", cache: "no-store", headers: { "Accept": "text/html" } })
        .then(function (response) {
          if (response.status === 401) {
            el.setAttribute("data-stale", "signed-out");
            return null;
          }
          return response.ok ? response.text() : null;
        })
        .then(function (html) {
          if (typeof html === "string") {
            el.innerHTML = html;
            el.setAttribute("data-refreshed", String(Date.now()));
          }
          if (el.getAttribute("data-stale") !== "signed-out") {
            again(every);
          }
        })
        .catch(function () {
          again(every * 2);
        });
    }
    again(every);
  }

  function guard(form) {
    form.addEventListener("submit", function (event) {
      if (form.getAttribute("data-sent") === "1") {
        event.preventDefault();
        return;
      }
      form.setAttribute("data-sent", "1");
      // If the answer never comes, the form may be sent again after a while.
      window.setTimeout(function () {
        form.removeAttribute("data-sent");
      }, 10000);
    });
  }

  document.addEventListener("DOMContentLoaded", function () {
    document.querySelectorAll("[data-refresh]").forEach(live);
    document.querySelectorAll("form[method='post']").forEach(guard);
  });

  // Back to a page from the browser's cache: its forms may be sent again.
  window.addEventListener("pageshow", function () {
    document.querySelectorAll("form[data-sent]").forEach(function (form) {
      form.removeAttribute("data-sent");
    });
  });
})();
