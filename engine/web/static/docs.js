// Swagger UI (/docs, engine/api/docs.py): what its markup lacks for keyboards and
// screen readers, added as it renders. An enum parameter's <select> gets its
// parameter's name (it has no label), and a scrolling example can be focused, so a
// keyboard can scroll it.
function fix() {
  for (const select of document.querySelectorAll("tr[data-param-name] select:not([aria-label])")) {
    select.setAttribute("aria-label", select.closest("tr").dataset.paramName);
  }
  for (const example of document.querySelectorAll(".highlight-code > .microlight:not([tabindex])")) {
    example.tabIndex = 0;
  }
}
new MutationObserver(fix).observe(document.body, { childList: true, subtree: true });
