// The e-mailed links put the code after "#code=" so it never reaches a server log. Copy it into the form,
// drop it from the address bar, and send the form to the public JSON API (no inline script: the CSP is
// script-src 'self'). Fields with a name go into the body; data-same-as fields are only checked here.
window.addEventListener("DOMContentLoaded", function () {
  var form = document.getElementById("code-form");
  var result = document.getElementById("result");
  var code = document.getElementById("code");
  if (!form || !result || !code) { return; }
  var match = /(?:^#|&)code=([^&]+)/.exec(window.location.hash || "");
  if (match) {
    code.value = decodeURIComponent(match[1]).trim();
    history.replaceState(null, "", window.location.pathname);
  }

  function show(text, ok) {
    result.textContent = text;
    result.className = ok ? "notice" : "error";
    result.setAttribute("role", ok ? "status" : "alert");
    result.hidden = false;
  }

  function send() {
    var body = {};
    var mismatch = false;
    form.querySelectorAll("input").forEach(function (input) {
      var other = input.getAttribute("data-same-as");
      if (other && input.value !== document.getElementById(other).value) { mismatch = true; }
      if (input.name) { body[input.name] = input.name === "token" ? input.value.trim() : input.value; }
    });
    if (mismatch) { show("The two passwords are not the same.", false); return; }
    var button = form.querySelector("button[type=submit]");
    button.disabled = true;
    fetch(form.getAttribute("data-endpoint"), {
      method: "POST",
      headers: {"Content-Type": "application/json", "Accept": "application/json"},
      body: JSON.stringify(body),
      credentials: "omit",
    }).then(function (response) {
      return response.json().catch(function () { return {}; }).then(function (data) {
        if (response.ok) {
          form.hidden = true;
          show(form.getAttribute("data-success"), true);
          return;
        }
        var error = (data && data.error) || {};
        var fields = (error.details && error.details.fields) || {};
        var extra = Object.keys(fields).map(function (k) { return fields[k].join(" "); }).join(" ");
        show((error.message || "Something went wrong (" + response.status + ").") + (extra ? " " + extra : ""),
             false);
        button.disabled = false;
      });
    }).catch(function () {
      show("The server could not be reached. Try again.", false);
      button.disabled = false;
    });
  }

  form.addEventListener("submit", function (event) { event.preventDefault(); send(); });
  if (match && form.getAttribute("data-auto-submit") === "yes") { send(); }
});
