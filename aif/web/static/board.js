// The leaderboard's filter form: a changed filter applies at once, and empty fields stay
// out of the URL, so a shared link holds only the view's own choices.
(function () {
  const form = document.getElementById("filters");
  if (!form) return;
  form.addEventListener("submit", () => {
    for (const el of form.elements) {
      if (el.name && el.value === "") el.disabled = true;
    }
  });
  for (const select of form.querySelectorAll("select")) {
    select.addEventListener("change", () => form.requestSubmit());
  }
})();
