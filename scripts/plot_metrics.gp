# Per-step training metrics of examples/demo and examples/compare (metrics.dat: one block per
# method at its selected learning rate, means over seeds; NaN where a method has no such value).
# Names as in TRL's logs where TRL has one (docs/math.md, "Metrics"):
#   row 1  loss, grad_norm (before clipping), logps/chosen, logps/rejected
#   row 2  DFT/DFT2 estimator: log u (mean; min and max dashed), effective sample size of the
#          normalised importance weights (1..m), the largest normalised weight, the total weight on
#          an example's negatives (1/m) Σ_j exp(d_ij − log u_i)
#   row 3  preference pairs: rewards/chosen (solid) and rewards/rejected (dashed), rewards/margins,
#          rewards/accuracies; on-policy methods: mean reward; Dynamic FT: mean token probability
# Usage: gnuplot -e "datafile='demo_out/metrics.dat'; outfile='demo_out/metrics.png'" scripts/plot_metrics.gp
if (!exists("datafile")) datafile = 'demo_out/metrics.dat'
if (!exists("outfile")) outfile = 'demo_out/metrics.png'
stats datafile using 1 nooutput
n = STATS_blocks
# Which columns hold a number anywhere (a panel no method logs is drawn empty; gnuplot warns once).
present = ""
do for [col=2:17] {
  undefine STATS_*
  stats datafile using col nooutput
  present = present . ((exists("STATS_records") && STATS_records > 0) ? "1 " : "0 ")
}
on(col) = word(present, col - 1) eq "1"
rows = (on(12) || on(16) || on(17)) ? 3 : 2  # no preference pairs, rewards or Dynamic FT: two rows
set terminal pngcairo size 1600,(rows == 3 ? 1000 : 680) font ",9" noenhanced
set output outfile
colors = "#1f77b4 #ff7f0e #2ca02c #d62728 #9467bd #8c564b #e377c2 #7f7f7f #bcbd22 #17becf #000000 #aaaa00"
c(b) = word(colors, b % 12 + 1)
set multiplot layout rows,4 title "Training metrics per step (mean over seeds, selected lr)"
set grid
set xlabel "step"
set key top right opaque box
set title "loss"
plot for [b=0:n-1] datafile index b using 1:2 with lines lw 1.5 lc rgb c(b) title columnheader(1)
unset key
set title "grad_norm (before clipping)"
set logscale y
if (on(3)) {
  plot for [b=0:n-1] datafile index b using 1:3 with lines lw 1.5 lc rgb c(b)
} else {
  plot [0:1][0:1] NaN notitle
}
unset logscale y
set title "logps/chosen (mean log pi of the positives)"
if (on(4)) {
  plot for [b=0:n-1] datafile index b using 1:4 with lines lw 1.5 lc rgb c(b)
} else {
  plot [0:1][0:1] NaN notitle
}
set title "logps/rejected (mean log pi of the negatives)"
if (on(5)) {
  plot for [b=0:n-1] datafile index b using 1:5 with lines lw 1.5 lc rgb c(b)
} else {
  plot [0:1][0:1] NaN notitle
}
set title "dft/log_u: mean (min, max dashed)"
if (on(6)) {
  plot for [b=0:n-1] datafile index b using 1:6 with lines lw 1.5 lc rgb c(b), \
       for [b=0:n-1] datafile index b using 1:7 with lines dt 2 lc rgb c(b), \
       for [b=0:n-1] datafile index b using 1:8 with lines dt 2 lc rgb c(b)
} else {
  plot [0:1][0:1] NaN notitle
}
set title "dft/ess (effective sample size of the normalised weights)"
if (on(9)) {
  plot for [b=0:n-1] datafile index b using 1:9 with lines lw 1.5 lc rgb c(b)
} else {
  plot [0:1][0:1] NaN notitle
}
set title "dft/max_weight (largest normalised weight)"
if (on(10)) {
  plot for [b=0:n-1] datafile index b using 1:10 with lines lw 1.5 lc rgb c(b)
} else {
  plot [0:1][0:1] NaN notitle
}
set title "dft/weight_sum ((1/m) sum_j exp(d_ij - log u_i))"
if (on(11)) {
  plot for [b=0:n-1] datafile index b using 1:11 with lines lw 1.5 lc rgb c(b)
} else {
  plot [0:1][0:1] NaN notitle
}
if (rows == 2) { unset multiplot; exit }
set title "rewards/chosen (solid), rewards/rejected (dashed)"
if (on(12)) {
  plot for [b=0:n-1] datafile index b using 1:12 with lines lw 1.5 lc rgb c(b), \
       for [b=0:n-1] datafile index b using 1:13 with lines dt 2 lc rgb c(b)
} else {
  plot [0:1][0:1] NaN notitle
}
set title "rewards/margins"
if (on(14)) {
  plot for [b=0:n-1] datafile index b using 1:14 with lines lw 1.5 lc rgb c(b)
} else {
  plot [0:1][0:1] NaN notitle
}
set title "rewards/accuracies"
set yrange [0:1]
if (on(15)) {
  plot for [b=0:n-1] datafile index b using 1:15 with lines lw 1.5 lc rgb c(b)
} else {
  plot [0:1][0:1] NaN notitle
}
set title "reward (on-policy), dynft/token_prob (Dynamic FT, dashed)"
if (on(16) || on(17)) {
  plot for [b=0:n-1] datafile index b using 1:16 with lines lw 1.5 lc rgb c(b), \
       for [b=0:n-1] datafile index b using 1:17 with lines dt 2 lc rgb c(b)
} else {
  plot [0:1][0:1] NaN notitle
}
unset multiplot
