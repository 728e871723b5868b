// lion_core/run/report.py: the round report's tables, filtered, sorted and paginated in place.
// Each table is pandas' HTML; the controls above it (div.controls[data-table]) filter its rows.
(function () {
  "use strict";
  const PAGE = 50;
  const DROPPED = ["not_novel", "duplicate", "contaminated"];

  function table(id, filters) {
    const el = document.getElementById(id);
    if (!el) return null;
    const controls = document.querySelector('.controls[data-table="' + id + '"]');
    const heads = Array.from(el.tHead.rows[0].cells);
    const names = heads.map((h) => h.textContent.trim());
    const body = el.tBodies[0];
    let rows = Array.from(body.rows);
    const state = { page: 0, col: -1, dir: 1 };
    const cell = (row, name) => row.cells[names.indexOf(name)];
    const text = (row, name) => (cell(row, name) ? cell(row, name).textContent.trim() : "");
    rows.forEach((row) => {
      ["verdict", "orders", "status"].forEach((name) => {
        const c = cell(row, name);
        if (!c) return;
        const v = c.textContent.trim();
        if (v) c.classList.add(DROPPED.includes(v) ? "dropped" : v.replace(/\s+/g, "-"));
      });
    });

    function shown() {
      return rows.filter((row) => filters.every((keep) => keep(row, text)));
    }
    function render() {
      const keep = shown();
      const pages = Math.max(1, Math.ceil(keep.length / PAGE));
      state.page = Math.min(state.page, pages - 1);
      const on = new Set(keep.slice(state.page * PAGE, (state.page + 1) * PAGE));
      // rows start hidden (report.css): only a page's rows are ever laid out
      rows.forEach((row) => {
        const show = on.has(row);
        if (row.hidden === show) row.hidden = !show;
        row.classList.toggle("on", show);
      });
      const first = keep.length ? state.page * PAGE + 1 : 0;
      controls.querySelector(".count").textContent =
        first + "–" + Math.min(keep.length, (state.page + 1) * PAGE) + " of " + keep.length;
    }
    function sortBy(i) {
      state.dir = state.col === i ? -state.dir : 1;
      state.col = i;
      const key = (row) => row.cells[i].textContent.trim();
      const num = rows.every((row) => key(row) === "" || !isNaN(Number(key(row))));
      rows.sort((a, b) => {
        const x = key(a), y = key(b);
        if (x === "" || y === "") return (x === "") - (y === "");  // blanks last
        return state.dir * (num ? Number(x) - Number(y) : x.localeCompare(y));
      });
      rows.forEach((row) => body.appendChild(row));
      heads.forEach((h, j) => { h.className = j === i ? (state.dir > 0 ? "asc" : "desc") : ""; });
      state.page = 0;
      render();
    }
    heads.forEach((h, i) => h.addEventListener("click", () => sortBy(i)));
    controls.querySelector(".prev").addEventListener("click", () => {
      state.page = Math.max(0, state.page - 1); render();
    });
    controls.querySelector(".next").addEventListener("click", () => { state.page += 1; render(); });
    controls.querySelectorAll("select, input").forEach((input) => {
      input.addEventListener("input", () => { state.page = 0; render(); });
    });
    render();
    return { render: () => { state.page = 0; render(); } };
  }

  const value = (id) => { const el = document.getElementById(id); return el ? el.value : ""; };
  const judged = table("judged", [
    (row, text) => !value("category") || text(row, "category") === value("category"),
    (row, text) => !value("verdict") || text(row, "verdict") === value("verdict"),
    (row, text) => !document.getElementById("disagree").checked ||
      text(row, "orders") === "disagree",
    (row) => !value("search") ||
      row.textContent.toLowerCase().includes(value("search").toLowerCase()),
  ]);
  const lineage = table("lineage", [
    (row, text) => !value("seed-filter").trim() || text(row, "seed") === value("seed-filter").trim(),
    (row, text) => {
      const want = value("status"), got = text(row, "status");
      return !want || (want === "dropped" ? DROPPED.includes(got) : got === want);
    },
    (row, text) => !value("kind") || text(row, "seed kind") === value("kind"),
  ]);
  // A seed's "children" link in the judged table: the lineage, filtered to that seed.
  document.querySelectorAll("a.children").forEach((link) => {
    link.addEventListener("click", (event) => {
      event.preventDefault();
      document.getElementById("seed-filter").value = link.dataset.seed;
      if (lineage) lineage.render();
      document.getElementById("lineage-section").scrollIntoView();
    });
  });
  const clear = document.getElementById("seed-clear");
  if (clear) clear.addEventListener("click", () => {
    document.getElementById("seed-filter").value = "";
    lineage.render();
  });
  void judged;
})();
