# Learning curves of examples/demo: held-out greedy accuracy and the negative log-likelihood of the
# base model's wrong samples vs fine-tuning step, for SFT, DFT and DFT2 (means over seeds).
# Usage: gnuplot -e "datafile='demo_out/curves.dat'; outfile='demo_out/learning_curves.png'" scripts/plot_demo.gp
if (!exists("datafile")) datafile = 'demo_out/curves.dat'
if (!exists("outfile")) outfile = 'demo_out/learning_curves.png'
# Legend titles; the demo passes each method's selected learning rate.
if (!exists("t_sft")) t_sft = 'SFT'
if (!exists("t_dft")) t_dft = 'DFT'
if (!exists("t_dft2")) t_dft2 = 'DFT2'
set terminal pngcairo size 1100,420 font ",11" noenhanced
set output outfile
set multiplot layout 1,2
set grid
set key bottom right
set xlabel "fine-tuning step"
set ylabel "test accuracy (greedy exact match)"
set title "Held-out accuracy (mean over seeds)"
plot datafile using 1:2 with linespoints lw 2 title t_sft, \
     '' using 1:3 with linespoints lw 2 title t_dft, \
     '' using 1:4 with linespoints lw 2 title t_dft2
set key top left
set ylabel "-log pi(y') of the base model's wrong samples"
set title "NLL of negatives (higher = pushed down)"
plot datafile using 1:5 with linespoints lw 2 title t_sft, \
     '' using 1:6 with linespoints lw 2 title t_dft, \
     '' using 1:7 with linespoints lw 2 title t_dft2
unset multiplot
