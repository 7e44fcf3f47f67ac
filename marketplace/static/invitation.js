// The invitation e-mail puts the code after "#code=" so it never reaches a server log; copy it into the form.
window.addEventListener("DOMContentLoaded", function () {
  var match = /(?:^#|&)code=([^&]+)/.exec(window.location.hash || "");
  var field = document.getElementById("code");
  if (match && field && !field.value) { field.value = decodeURIComponent(match[1]); }
  if (match) { history.replaceState(null, "", window.location.pathname); }
});
