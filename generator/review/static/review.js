// Keyboard shortcuts of the review app. Letters act only when no text field has the focus.
// a accept · r reject (reason, then Enter) · e edit (Ctrl+Enter saves) · j / k next / previous ·
// n next unreviewed · q queue · Esc closes a panel. Digits 1-9 pick a reject reason while the list has focus.
(function () {
  "use strict";
  function typing(el) {
    return el && (el.tagName === "INPUT" || el.tagName === "TEXTAREA" || el.tagName === "SELECT" || el.isContentEditable);
  }
  function follow(key) {
    var link = document.querySelector('a[data-key="' + key + '"]');
    if (link) { window.location.href = link.href; return true; }
    return false;
  }
  function open(id, focusId) {
    document.querySelectorAll("form.panel").forEach(function (p) { p.hidden = p.id !== id; });
    var panel = document.getElementById(id);
    if (panel) { var f = document.getElementById(focusId); if (f) { f.focus(); } }
    return !!panel;
  }
  document.addEventListener("DOMContentLoaded", function () {
    var ro = document.getElementById("reject-open"), eo = document.getElementById("edit-open");
    if (ro) { ro.addEventListener("click", function () { open("reject-form", "reason"); }); }
    if (eo) { eo.addEventListener("click", function () { open("edit-form", "edit-question"); }); }
    var reason = document.getElementById("reason");
    if (reason) {
      reason.addEventListener("keydown", function (ev) {
        var n = parseInt(ev.key, 10);
        if (n >= 1 && n < reason.options.length) { reason.selectedIndex = n; ev.preventDefault(); }
        else if (ev.key === "Enter" && reason.value) { ev.preventDefault(); document.getElementById("reject-form").requestSubmit(); }
      });
    }
    var editForm = document.getElementById("edit-form");
    if (editForm) {
      editForm.addEventListener("keydown", function (ev) {
        if (ev.key === "Enter" && (ev.ctrlKey || ev.metaKey)) { ev.preventDefault(); editForm.requestSubmit(); }
      });
    }
  });
  document.addEventListener("keydown", function (ev) {
    if (ev.key === "Escape") { document.querySelectorAll("form.panel").forEach(function (p) { p.hidden = true; }); document.activeElement.blur(); return; }
    if (ev.ctrlKey || ev.metaKey || ev.altKey || typing(document.activeElement)) { return; }
    var done = false;
    switch (ev.key) {
      case "a": var f = document.getElementById("accept-form"); if (f) { f.requestSubmit(); done = true; } break;
      case "r": done = open("reject-form", "reason"); break;
      case "e": done = open("edit-form", "edit-question"); break;
      case "j": case "k": case "n": case "q": done = follow(ev.key); break;
    }
    if (done) { ev.preventDefault(); }
  });
})();
