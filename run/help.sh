# Sourced first by every run/ script, before run/setup.sh or run/venv.sh: with -h or --help among
# the arguments it prints the calling script's usage and exits 0, so asking for help creates,
# generates and trains nothing. The usage is the script's header: the comment lines after the
# shebang, up to the first line that is not a comment.
for _arg in "$@"; do
  case $_arg in
    -h|--help)
      awk 'NR == 1 { next } /^#/ { sub(/^# ?/, ""); print; next } { exit }' "$0"
      exit 0 ;;
  esac
done
unset _arg
