// The job page's loss chart (uPlot) from the progress the page was rendered with, kept up
// to date from the job's event stream while the job runs.
(function () {
  const script = document.getElementById("job-script");
  const jobId = script.dataset.jobId;
  const data = JSON.parse(document.getElementById("progress-data").textContent);
  const losses = new Map();  // step -> loss; a step redone after a resume keeps its last value
  for (const p of data.points) if (p.loss !== null) losses.set(p.step, p.loss);

  function series() {
    const steps = [...losses.keys()].sort((a, b) => a - b);
    const loss = steps.map((s) => losses.get(s));
    // The validation loss is measured once, after training: a point at the last step.
    const validation = steps.map((s, i) =>
      i === steps.length - 1 && data.validation_loss !== null ? data.validation_loss : null);
    return [steps, loss, validation];
  }

  const el = document.getElementById("loss-chart");
  let chart = null;
  function draw() {
    const d = series();
    if (d[0].length === 0) {
      el.textContent = "No training progress yet.";
      return;
    }
    if (chart) { chart.setData(d); return; }
    el.textContent = "";
    chart = new uPlot({
      width: Math.min(el.clientWidth || 720, 900), height: 280,
      scales: { x: { time: false } },
      axes: [{ label: "step" }, { label: "loss" }],
      series: [
        { label: "step" },
        { label: "training loss", stroke: "#2456c8", width: 2 },
        { label: "validation loss", stroke: "#c8662a", width: 0,
          points: { show: true, size: 9, fill: "#c8662a" } },
      ],
    }, d, el);
    window.aifLossChart = chart;  // the browser tests read the drawn data back from it
  }
  draw();
  window.addEventListener("resize", () => {
    if (chart) chart.setSize({ width: Math.min(el.clientWidth, 900), height: 280 });
  });

  if (script.dataset.terminal === "true" || !window.EventSource) return;
  const stream = new EventSource(`/jobs/${jobId}/events?after=${script.dataset.after}`);
  stream.onmessage = (message) => {
    const event = JSON.parse(message.data);
    if (event.type.endsWith(".job.progress.v1") && event.data.stage === "training") {
      if (event.data.loss !== null) losses.set(event.data.step, event.data.loss);
      draw();
      if (event.data.tokens_per_s !== null) {
        document.getElementById("fact-tps").textContent = event.data.tokens_per_s.toFixed(1);
      }
      document.getElementById("fact-steps").textContent =
        `${event.data.step} / ${event.data.total_steps}`;
    } else if (event.type.endsWith(".job.status.v1")) {
      const state = document.getElementById("job-state");
      state.textContent = state.dataset.state = event.data.state;
      // A new stage brings new sections (scores, gate, files): show them.
      stream.close();
      window.location.reload();
    }
  };
})();
