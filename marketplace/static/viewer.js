// Zoom and rotate for the side-by-side KYC images (no inline script: the CSP forbids it).
document.addEventListener("DOMContentLoaded", function () {
  document.querySelectorAll("figure.viewer").forEach(function (figure) {
    var img = figure.querySelector("img");
    var scale = 1, angle = 0;
    function apply() { img.style.transform = "scale(" + scale + ") rotate(" + angle + "deg)"; }
    figure.querySelectorAll("button[data-action]").forEach(function (button) {
      button.addEventListener("click", function () {
        var action = button.getAttribute("data-action");
        if (action === "zoom-in") { scale = Math.min(scale * 1.25, 6); }
        if (action === "zoom-out") { scale = Math.max(scale / 1.25, 0.5); }
        if (action === "rotate") { angle = (angle + 90) % 360; }
        apply();
      });
    });
  });
});
