// ReDoc (/redoc, engine/api/docs.py) at WCAG AA: started here, not by an inline
// script (the pages' content security policy), with a theme whose text reaches 4.5:1
// on its background (ReDoc's default greys, greens and oranges do not), and the names
// and roles its markup lacks, added as it renders (fix() below).
/* global Redoc */
const THEME = {
  colors: {
    primary: { main: "#2b2b8c" },
    success: { main: "#17683f" },
    warning: { main: "#8a4b00" },
    error: { main: "#b3261e" },
    text: { primary: "#1f2328", secondary: "#4a5160" },
    responses: {
      success: { tabTextColor: "#7fd4a0", color: "#17683f", backgroundColor: "#eaf5ee" },
      error: { tabTextColor: "#ff9c94", color: "#a1241b", backgroundColor: "#fbeceb" },
      redirect: { tabTextColor: "#f5c26b", color: "#7a4400", backgroundColor: "#fdf1e3" },
      info: { tabTextColor: "#8cc4f0", color: "#1f5a8a", backgroundColor: "#e8f1f8" },
    },
    http: {
      get: "#1f63b0",
      post: "#17784a",
      put: "#9a4d00",
      options: "#5b4a9e",
      patch: "#0f6e65",
      delete: "#c02626",
      basic: "#4a5160",
      link: "#1f5a8a",
      head: "#7a3fb8",
    },
  },
  typography: {
    code: { color: "#a1241b", backgroundColor: "#f3f4f6" },
    links: { color: "#1f5fa8", visited: "#1f5fa8", hover: "#143f70" },
  },
  sidebar: { backgroundColor: "#fafafa", textColor: "#1f2328" },
  rightPanel: { backgroundColor: "#263238", textColor: "#ffffff" },
  schema: {
    typeNameColor: "#4a5160",
    typeTitleColor: "#4a5160",
    requireLabelColor: "#b3261e",
    labelsTextSize: "0.9em",
    nestedBackground: "#fafafa",
  },
};

const OPTIONS = {
  theme: THEME,
  hideDownloadButton: true,
};

// ReDoc's dropdowns have no label: they choose a content type (application/json...)
// or one of a body's schemas for its example. Named by what they choose. And the side
// menu's operations, under their tag, are menu items in a plain list (no menu around
// them, and a list that holds no list items): that list is the tag's submenu.
function fix() {
  for (const select of document.querySelectorAll("#redoc select:not([aria-label])")) {
    const types = [...select.options].every((option) => option.value.includes("/"));
    select.setAttribute("aria-label", types ? "Content type" : "Example");
  }
  for (const list of document.querySelectorAll("#redoc [role=menu] ul:not([role])")) {
    list.setAttribute("role", "menu");
  }
}

const main = document.getElementById("redoc");
new MutationObserver(fix).observe(main, { childList: true, subtree: true });
Redoc.init(main.dataset.specUrl, OPTIONS, main);
